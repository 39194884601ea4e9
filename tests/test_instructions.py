"""Instruction tuning end to end on a tiny random causal LM: a fit that learns short answers and measures them, the
saved model's card, completions from ``generate``, ``predict`` and the command line, prompts read without answers,
and a guided tune whose moves come from the language model's rule table."""

from __future__ import annotations

import json

import pytest
from tests.conftest import run_tuneloop

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.data.instructions import InstructionExamples, read_instructions, write_instructions
from tuneloop.errors import ConfigError

TOPICS = {" crude": "oil barrels opec refinery", " grain": "wheat corn harvest farmers", " ship": "port vessel cargo"}


def topic_examples(n: int) -> InstructionExamples:
    prompts, completions = [], []
    for i in range(n):
        topic = list(TOPICS)[i % 3]
        words = TOPICS[topic].split()
        prompts.append(f"topic of: {words[i % len(words)]} {words[(i + 1) % len(words)]}")
        completions.append(topic)
    return InstructionExamples(prompts, completions, [f"line {i + 1}" for i in range(n)], "topics.jsonl")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_causal_lm):
    """A fit that learns the topics: every weight of the tiny model trains (its random output layer is too weak to
    move far with adapters alone)."""
    root = tmp_path_factory.mktemp("instructions")
    train = write_instructions(topic_examples(60), root / "train.jsonl")
    val = write_instructions(topic_examples(63).subset(range(45, 63)), root / "val.jsonl")
    run = api.fit(train, val, model=str(tiny_causal_lm), workspace=root / "ws", lora_rank=0, learning_rate=3e-2,
                  epochs=8, batch_size=4, patience=0, warmup_ratio=0.0)
    return root, run


def test_a_fit_learns_short_answers_and_measures_them_against_the_starting_model(trained):
    _, run = trained
    assert run.task.kind == "instruction-tuning" and run.recipe.lora_rank == 0
    metrics = run.metrics
    assert metrics["val_loss"] < metrics["start_val_loss"] / 2, "the answers are learned"
    assert metrics["val_perplexity"] == pytest.approx(2.718281828 ** metrics["val_loss"], rel=1e-4)
    assert metrics["val_exact_match"] == 1.0 and metrics["exact_match_on"] == 18
    assert metrics["train_tokens_per_s"] > metrics["train_samples_per_s"], "several tokens per example"


def test_the_saved_model_is_a_plain_folder_with_a_card_of_its_data_recipe_and_scores(trained):
    from transformers import AutoModelForCausalLM

    _, run = trained
    card = (run.path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    assert "every weight trained" in card and "| learning_rate | 0.03 |" in card
    assert "train.jsonl` (60 examples)" in card and "val.jsonl` (18 examples)" in card
    assert f"| validation exact match (greedy) | {run.metrics['val_exact_match']:.4g} |" in card
    plain = AutoModelForCausalLM.from_pretrained(run.path)
    assert type(plain).__name__ == "LlamaForCausalLM"


def test_generate_predict_and_the_command_line_give_the_same_completions(trained):
    root, run = trained
    prompts = ["topic of: oil barrels", "topic of: cargo port"]
    answers = api.generate(run, prompts)
    assert answers == ["crude", "ship"]
    assert api.generate(run, prompts[0]) == ["crude"], "one prompt: a list of one"
    assert run.predict(prompts).texts == answers
    assert api.generate(run, prompts, max_new_tokens=1) == answers, "one token is each whole answer"
    with pytest.raises(ConfigError, match="'max_new_tokens' parameter must be an int >= 1. Got 0"):
        api.generate(run, prompts, max_new_tokens=0)

    said = run_tuneloop("generate", run.id, *prompts, "--workspace", root / "ws")
    assert said.returncode == 0, said.stderr
    assert "crude" in said.stdout and "ship" in said.stdout

    asked = root / "asked.jsonl"
    asked.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(prompts)))
    unlabelled = read_instructions(asked, labelled=False)
    assert unlabelled.completions is None and not unlabelled.has_labels
    with pytest.raises(Exception, match="completion"):
        read_instructions(asked)
    out = root / "answers.csv"
    done = run_tuneloop("predict", run.id, asked, "--output", out, "--workspace", root / "ws")
    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    assert lines[0].split(",")[-1] == "completion" and lines[1].endswith(",crude") and lines[2].endswith(",ship")


def test_a_table_model_cannot_generate(tmp_path, tiny_model):
    rows = ["a,b,label", *(f"{i},{i % 3},{'xy'[i % 2]}" for i in range(30))]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    run = api.fit(tmp_path / "t.csv", workspace=tmp_path / "ws", epochs=1)
    with pytest.raises(ConfigError, match="not a language model: use predict"):
        api.generate(run, ["hello"])


def test_a_guided_tune_of_a_language_model_moves_its_own_knobs(tmp_path, tiny_causal_lm):
    train = write_instructions(topic_examples(36), tmp_path / "train.jsonl")
    result = api.tune(train, model=str(tiny_causal_lm), workspace=tmp_path / "ws", budget="3trials",
                      seed_check=False, refit=False)
    reasons = [trial.reason for trial in result.trials]
    assert "LoRA adapters of rank 8" in reasons[0]
    lm_knobs = ("lora_rank", "lora_targets", "lora_dropout", "learning_rate", "epochs", "weight_decay")
    assert all(any(knob in reason for knob in lm_knobs) for reason in reasons[1:]), reasons
    assert not any(knob in reason for reason in reasons for knob in ("mixup", "label_smoothing", "l2sp")), reasons
    assert result.best_run is not None and result.best_run.recipe.metric == "loss"
    assert all(trial.diagnosis is None or trial.diagnosis.label in {"underfitting", "too_slow", "good_fit",
                                                                     "overfitting", "diverged", "noisy_validation"}
               for trial in result.trials)
    report = tmp_path / "report.html"
    done = run_tuneloop("report", result.study_id, "-o", report, "--workspace", tmp_path / "ws")
    assert done.returncode == 0, done.stderr
    page = report.read_text()
    assert "Answers of the best model" in page and "Confusion matrix" not in page
    assert "exact match" in page and "<td>topic of:" in page


@pytest.mark.e2e
def test_lora_on_the_packaged_smollm2_learns_reuters_topics_and_saves_a_plain_model(tmp_path, monkeypatch,
                                                                                   smollm2_cache):
    from transformers import AutoModelForCausalLM

    from tuneloop.data.demo import reuters_topic_instructions

    monkeypatch.setenv("TUNELOOP_MODEL_CACHE", str(smollm2_cache))
    train = write_instructions(reuters_topic_instructions("train", 24, seed=0), tmp_path / "train.jsonl")
    val = write_instructions(reuters_topic_instructions("test", 16, seed=1), tmp_path / "val.jsonl")
    run = api.fit(train, val, workspace=tmp_path / "ws", epochs=1, learning_rate=1e-3, max_length=256)
    assert run.recipe.lora_rank == 8 and run.recipe.lora_targets == "attention", "LoRA by default"
    assert run.metrics["val_loss"] < run.metrics["start_val_loss"] - 0.5, run.metrics
    assert 0.0 <= run.metrics["val_exact_match"] <= 1.0
    assert run.metrics["exact_match_on"] == len(read_instructions(val)), "every validation example answered"
    [answer] = api.generate(run, "Name the topic of this news text (acq, crude, earn, grain, interest, money-fx, "
                                 "ship, trade).\nText: Shell raised crude oil prices by 50 cts a barrel\nTopic:")
    assert isinstance(answer, str)
    plain = AutoModelForCausalLM.from_pretrained(run.path)
    assert not any("lora" in name for name, _ in plain.named_parameters()), "merged: no adapters left"


@pytest.mark.parametrize("strategy", ["grid", "random", "bayes"])
def test_every_search_strategy_searches_the_language_models_space(tmp_path, tiny_causal_lm, strategy):
    train = write_instructions(topic_examples(24), tmp_path / "train.jsonl")
    result = api.tune(train, model=str(tiny_causal_lm), workspace=tmp_path / "ws", budget="2trials",
                      strategy=strategy, seed_check=False, refit=False, recipe=Recipe(epochs=1))
    searched = [trial for trial in result.trials if trial.kind == "search"]
    assert len(searched) == 2 and result.best_run is not None
    assert all(trial.recipe.lora_rank in (4, 8, 16, 32) for trial in searched), [t.recipe for t in searched]
    assert len({trial.recipe for trial in searched}) == 2, "two recipes, not one twice"


def test_the_seed_check_reruns_a_language_models_best_recipes(tmp_path, tiny_causal_lm):
    train = write_instructions(topic_examples(24), tmp_path / "train.jsonl")
    val = write_instructions(topic_examples(30).subset(range(24, 30)), tmp_path / "val.jsonl")
    result = api.tune(train, val, model=str(tiny_causal_lm), workspace=tmp_path / "ws", budget="8trials",
                      seed_check=True, refit=False, recipe=Recipe(epochs=1))
    kinds = [trial.kind for trial in result.trials]
    assert kinds[:2] == ["search", "search"] and "seed check" in kinds, (kinds, result.choice)
    assert result.best_run.predict(["topic of: oil barrels"]).texts is not None
