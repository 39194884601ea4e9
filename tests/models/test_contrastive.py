"""Contrastive tuning of the encoder on pairs of texts, then the head (SetFit's method), as a phase of a run:
balanced pairs, a tuned encoder saved with the head, and a killed run that resumes as if uninterrupted."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file
from tests.conftest import sentiment_rows
from tests.training.test_loop import Boom

from tuneloop import api, pipeline
from tuneloop.config import Recipe
from tuneloop.data.pairs import draw_pairs
from tuneloop.data.text import TextExamples
from tuneloop.store.workspace import Workspace
from tuneloop.tasks.text import TextTask
from tuneloop.training.checkpoint import EpochCheckpoint


def test_pairs_are_balanced_never_a_text_with_itself_and_drawn_from_the_seed():
    labels = [0] * 6 + [1] * 3 + [2] * 1  # the last class has no partner of its own
    first, second, same = draw_pairs(labels, 4, np.random.default_rng(0))
    assert len(first) == 2 * (2 * 10 - 1)  # each text twice a negative, and all but one twice a positive
    assert not np.any(first == second)
    labels = np.asarray(labels)
    assert np.all((labels[first] == labels[second]) == (same == 1.0))
    assert abs(same.mean() - 0.5) < 0.03
    again = draw_pairs(list(labels), 4, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip((first, second, same), again, strict=True))


def examples(n_per_class: int, seed: int) -> TextExamples:
    rows = sentiment_rows(n_per_class, seed)
    return TextExamples([t for t, _ in rows], [y for _, y in rows], [f"line {i}" for i in range(len(rows))], "mem")


RECIPE = Recipe(trainable_layers=0, learning_rate=3e-3, epochs=3, batch_size=8, patience=0, contrastive=4,
                precision="fp32")


def test_a_run_with_pairs_saves_its_tuned_encoder_with_the_head(tiny_model, workspace):
    run = api.fit(examples(12, 0), examples(6, 1), model=str(tiny_model), workspace=workspace, recipe=RECIPE)
    assert run.metrics["cached_inputs"] == "vectors after pairs" and run.metrics["pairs_seconds"] > 0
    saved = load_file(str(run.path / "model.safetensors"))
    pretrained = load_file(str(tiny_model / "model.safetensors"))
    name = "encoder.encoder.layer.0.attention.self.query.weight"
    assert not np.allclose(saved[name].numpy(), pretrained[name.removeprefix("encoder.")].numpy()), (
        "pairs tuned the encoder")
    texts = ["good fine nice", "bad sad grim"]
    assert api.load_run(run.id, workspace).predict(texts).labels == run.predict(texts).labels
    with Workspace.open(workspace) as store:
        assert [e["epoch"] for e in store.epochs(run.id)] == [1, 2, 3], "the run's epochs are the head's"


def test_a_run_killed_after_its_pairs_resumes_as_if_uninterrupted(tiny_model, tmp_path):
    def task() -> TextTask:
        return TextTask.load(examples(12, 0), examples(6, 1), text_col=None, label_col=None, model=str(tiny_model),
                             val_fraction=0.2, seed=0)

    with Workspace.open(tmp_path / "a", create=True) as store:
        straight, _ = pipeline.train_run(store, task(), RECIPE)
    checkpoint = EpochCheckpoint(tmp_path / "ckpt")
    with Workspace.open(tmp_path / "b", create=True) as store:
        with pytest.raises(RuntimeError, match="killed"):
            pipeline.train_run(store, task(), RECIPE, [Boom(at_epoch=2)], checkpoint)
        assert (tmp_path / "ckpt" / "pairs").is_dir(), "the pairs phase was checkpointed apart"
        resumed, result = pipeline.train_run(store, task(), RECIPE, [], checkpoint)
    assert result.resumed_from_epoch == 1
    same = ("train_loss", "val_loss", "val_accuracy")
    assert [[e[k] for k in same] for e in resumed.history] == [[e[k] for k in same] for e in straight.history]
    texts = ["good great superb", "awful poor terrible", "fine sad"]
    assert np.allclose(resumed.predict(texts).probabilities, straight.predict(texts).probabilities, atol=1e-6)


def test_a_later_trial_with_the_same_pairs_starts_from_the_kept_encoder_with_the_same_result(tiny_model, tmp_path):
    def task() -> TextTask:
        return TextTask.load(examples(12, 0), examples(6, 1), text_col=None, label_col=None, model=str(tiny_model),
                             val_fraction=0.2, seed=0)

    shared = task()
    other_head = RECIPE.replace(head_dropout=0.3, learning_rate=1e-3)
    with Workspace.open(tmp_path / "a", create=True) as store:
        first, _ = pipeline.train_run(store, shared, RECIPE)
        kept, _ = pipeline.train_run(store, shared, other_head)
        fresh, _ = pipeline.train_run(store, task(), other_head)
    assert first.metrics["pairs_seconds"] > 0 and kept.metrics["pairs_seconds"] == 0, "no second tuning"
    same = ("train_loss", "val_loss", "val_accuracy")
    assert [[e[k] for k in same] for e in kept.history] == [[e[k] for k in same] for e in fresh.history]
    folded = shared.fold(np.arange(20), np.arange(20, 30))
    assert folded._tuned is None, "a fold tunes its own encoder: the kept one has seen its validation texts"
