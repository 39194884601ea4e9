"""Transfer-learning knobs change what trains the way they claim: LoRA, gradual unfreezing, cached top
layers, and the three dropout knobs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tests.training.test_loop import toy_sets

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.models import get_adapter
from tuneloop.tasks.text import TextTask
from tuneloop.training.loop import Callback, train

CPU = torch.device("cpu")


class Snapshots(Callback):
    """The model's weights after each epoch."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.after_epoch = model, {}

    def on_epoch_end(self, record, is_best) -> None:
        self.after_epoch[record.epoch] = {k: v.clone() for k, v in self.model.state_dict().items()}


def changed_between(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_gradual_unfreezing_trains_the_head_first_then_one_more_layer_each_epoch(tiny_model):
    recipe = Recipe(epochs=3, trainable_layers=2, unfreezing="gradual", learning_rate=1e-2, patience=0,
                    precision="fp32", warmup_ratio=0.0)
    model, data, val = toy_sets(tiny_model, recipe, n=8)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    snapshots = Snapshots(model)
    train(model, data, val, recipe, CPU, "fp32", [snapshots])
    epochs = [start, snapshots.after_epoch[1], snapshots.after_epoch[2], snapshots.after_epoch[3]]
    changed = [changed_between(epochs[i - 1], epochs[i]) for i in (1, 2, 3)]

    def group(keys: set[str], part: str) -> set[str]:
        return {k for k in keys if part in k}

    assert changed[0] == {"head.weight", "head.bias"}, "epoch 1: the head alone"
    assert group(changed[1], ".layer.1.") and not group(changed[1], ".layer.0."), "epoch 2: plus the top layer"
    assert group(changed[2], ".layer.1.") and group(changed[2], ".layer.0."), "epoch 3: plus the next layer"
    assert not any(group(c, "embeddings") for c in changed), "trainable_layers=2 never reaches the embeddings"
    assert all(p.requires_grad for n, p in model.named_parameters() if ".layer." in n or "head" in n), \
        "afterwards the model trains what the recipe says again"


def test_without_gradual_unfreezing_every_trainable_layer_moves_in_the_first_epoch(tiny_model):
    recipe = Recipe(epochs=1, trainable_layers=2, learning_rate=1e-2, precision="fp32", warmup_ratio=0.0)
    model, data, val = toy_sets(tiny_model, recipe, n=8)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, data, val, recipe, CPU, "fp32")
    changed = changed_between(start, model.state_dict())
    assert {k for k in changed if ".layer.0." in k} and {k for k in changed if ".layer.1." in k}


def test_lora_trains_only_the_adapters_and_the_head(tiny_model):
    recipe = Recipe(epochs=1, trainable_layers=1, lora_rank=4, learning_rate=1e-2, precision="fp32",
                    warmup_ratio=0.0)
    model, data, val = toy_sets(tiny_model, recipe, n=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert all(".layer.1.attention.self." in n for n in trainable if "lora_" in n), \
        "adapters on query, key and value of the top layer only"
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, data, val, recipe, CPU, "fp32")
    changed = changed_between(start, model.state_dict())
    assert {k for k in changed if "lora_B" in k}, "the adapters learned"
    assert all("lora_" in k or k.startswith("head.") for k in changed), "no pretrained weight moved"


def test_lora_export_is_merged_and_predicts_like_the_trained_model(tiny_model, toy_csv, workspace):
    run = api.fit(toy_csv, model=str(tiny_model), workspace=workspace, epochs=2, trainable_layers="all",
                  lora_rank=4, lora_targets="all-linear", learning_rate=2e-2, precision="fp32", warmup_ratio=0.0)
    trained_model, _ = run.model()  # the in-memory model, adapters still separate
    assert any("lora_" in n for n, _ in trained_model.named_parameters())
    texts = ["good great fine", "bad awful terrible", "a plain sentence"]
    in_memory = run.predict_texts(texts, precision="fp32").probabilities

    # Saved slim (the adapters touched the linear layers only): the changed tensors, and the backbone's for the rest
    saved = load_file(str(run.path / "trained.safetensors"))
    assert not (run.path / "model.safetensors").exists()
    assert not any("lora_" in k or "base_layer" in k for k in saved), "plain weights: loads without peft"
    pretrained = load_file(str(tiny_model / "model.safetensors"))
    query = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(saved[f"encoder.{query}"], pretrained[query]), "the adapter is folded into the weight"
    embeddings = "embeddings.word_embeddings.weight"
    assert f"encoder.{embeddings}" not in saved, "untargeted weights untouched: read from the backbone"

    reloaded = api.load_run(run.id, workspace)
    assert not any("lora_" in n for n, _ in reloaded.model()[0].named_parameters())
    from_disk = reloaded.predict_texts(texts, precision="fp32").probabilities
    torch.testing.assert_close(torch.from_numpy(from_disk), torch.from_numpy(in_memory), atol=1e-5, rtol=1e-4)


def test_lora_targets_that_match_nothing_name_the_modules_there_are(tiny_model):
    with pytest.raises(Exception, match="matches no linear layer.*query"):
        get_adapter("hf_text").build(str(tiny_model), 2, Recipe(trainable_layers=1, lora_rank=4,
                                                                 lora_targets="q_proj"))


@pytest.mark.parametrize("changes, problem", [
    ({"trainable_layers": 0, "lora_rank": 8}, "LoRA"),
    ({"trainable_layers": 0, "unfreezing": "gradual"}, "Gradual unfreezing"),
    ({"unfreezing": "sometimes"}, "'unfreezing'"),
    ({"attention_dropout": 1.0}, "'attention_dropout'"),
    ({"lora_rank": -1}, "'lora_rank'"),
])
def test_invalid_transfer_knobs_are_reported(changes, problem):
    assert any(problem in p for p in Recipe().replace(**changes).problems())


def test_dropout_knobs_reach_their_places(tiny_model):
    recipe = Recipe(dropout=0.2, attention_dropout=0.3, head_dropout=0.4)
    model, _ = get_adapter("hf_text").build(str(tiny_model), 2, recipe)
    assert model.encoder.config.hidden_dropout_prob == 0.2
    assert model.encoder.config.attention_probs_dropout_prob == 0.3
    assert model.dropout.p == 0.4
    hidden_dropouts = {m.p for n, m in model.encoder.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert 0.2 in hidden_dropouts


@pytest.mark.parametrize("depth", [0, 1])
def test_top_layers_on_cached_states_compute_what_the_whole_encoder_does(tiny_model, depth):
    model, tokenizer = get_adapter("hf_text").build(str(tiny_model), 2, Recipe())
    model.eval()
    batch = tokenizer(["a short one", "a rather longer sentence than the other"], padding=True, return_tensors="pt")
    with torch.no_grad():
        full = model.embed(batch["input_ids"], batch["attention_mask"])
        states = model.hidden_states_at(batch["input_ids"], batch["attention_mask"], depth)
        top = model.embed_from(states, batch["attention_mask"], depth)
    torch.testing.assert_close(top, full)
    assert len(list(model.encoder_layers())) == 2 and all(
        type(layer).__name__ == "BertLayer" for layer in model.encoder_layers()), "lower layers are put back"


def test_top_k_trial_trains_on_cached_states_and_its_saved_model_scores_the_same(tiny_model, toy_csv, workspace):
    run = api.fit(toy_csv, model=str(tiny_model), workspace=workspace, epochs=2, trainable_layers=1,
                  learning_rate=1e-3, batch_size=8)
    assert run.metrics["cached_inputs"] == "layer-1"
    task = TextTask.load(toy_csv, None, text_col=None, label_col=None, model=str(tiny_model),
                         val_fraction=0.2, seed=run.recipe.seed)
    reloaded = api.load_run(run.id, workspace)
    predicted = reloaded.predict_texts(task.val.texts).labels
    accuracy = sum(p == t for p, t in zip(predicted, task.val.labels, strict=True)) / len(task.val)
    assert accuracy == run.metrics["val_accuracy"]


def test_int8_of_a_fresh_lora_run_quantizes_the_merged_model(tiny_model, toy_csv, workspace):
    run = api.fit(toy_csv, model=str(tiny_model), workspace=workspace, epochs=1, trainable_layers=1, lora_rank=4,
                  learning_rate=1e-2)
    assert run.model()[0].uses_lora
    quantized = run.int8_model()
    assert not any("lora_" in name for name, _ in quantized.named_modules())
    assert run.predict_texts(["good great fine", "bad awful"], precision="int8").agreement_with_fp32 is not None


def test_init_scratch_builds_the_encoder_from_its_config_and_caches_nothing(tiny_model, toy_csv, workspace):
    pretrained = load_file(str(tiny_model / "model.safetensors"))
    fresh, _ = get_adapter("hf_text").build(str(tiny_model), 2, Recipe(init="scratch", seed=1))
    own = {k: v for k, v in fresh.encoder.state_dict().items() if k in pretrained}
    assert own, "the encoder's tensors are named as in the checkpoint"
    assert not all(torch.equal(v, pretrained[k]) for k, v in own.items()), "random weights, not the checkpoint's"
    assert fresh.pretrained_parameter_names() == [], "nothing to pull toward (L2-SP) or call pretrained"

    run = api.fit(toy_csv, model=str(tiny_model), workspace=workspace, init="scratch", trainable_layers=0,
                  epochs=1, learning_rate=1e-3)
    assert run.recipe.init == "scratch"
    assert run.metrics["cached_inputs"] is None, "a random encoder's outputs are not shared through the cache"
