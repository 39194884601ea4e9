"""Frozen-encoder vectors are computed once, reused across trials and processes, and never read stale."""

from __future__ import annotations

import os

import torch
from tests.conftest import sentiment_rows, use_text_grid, write_csv

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.data.feature_cache import FeatureCache, feature_key
from tuneloop.tasks.text import TextTask


def test_computed_once_then_reused_from_memory_and_disk(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6, dtype=torch.float32).reshape(3, 2)

    cache = FeatureCache(tmp_path)
    first = cache.get("k1", compute)
    assert torch.equal(cache.get("k1", compute), first) and len(calls) == 1
    assert torch.equal(FeatureCache(tmp_path).get("k1", compute), first) and len(calls) == 1  # from disk
    cache.get("k2", compute)
    assert len(calls) == 2 and (cache.computed, cache.reused) == (2, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k1.safetensors", "k2.safetensors"]


def test_memory_stays_within_its_bound(tmp_path):
    cache = FeatureCache(None, memory_limit=100)
    for key in "abc":
        cache.get(key, lambda: torch.zeros(20))  # 80 bytes each
    assert list(cache._memory) == ["c"]


def test_key_changes_with_everything_the_vectors_depend_on(tiny_model, tmp_path):
    base = feature_key(str(tiny_model), "texts-a", 128, "bf16")
    assert base == feature_key(str(tiny_model), "texts-a", 128, "bf16")
    assert base != feature_key(str(tiny_model), "texts-b", 128, "bf16")
    assert base != feature_key(str(tiny_model), "texts-a", 64, "bf16")
    assert base != feature_key(str(tiny_model), "texts-a", 128, "fp32")
    layer_1 = feature_key(str(tiny_model), "texts-a", 128, "bf16", "layer-1")
    assert layer_1 not in (base, feature_key(str(tiny_model), "texts-a", 128, "bf16", "layer-2")), "new depth, new key"
    weights = tiny_model / "model.safetensors"
    stat = os.stat(weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    try:
        assert base != feature_key(str(tiny_model), "texts-a", 128, "bf16"), "new weights, new key"
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_trials_at_one_depth_share_one_cache_and_other_depths_have_their_own(tiny_model, toy_csv, workspace,
                                                                             monkeypatch, tmp_path):
    use_text_grid(monkeypatch, {"trainable_layers": [0, 2], "lr_multiplier": [1.0, 3.0]})
    base = Recipe(epochs=2, batch_size=8, patience=0)
    result = api.tune(toy_csv, model=str(tiny_model), workspace=workspace, recipe=base, budget="4trials",
                      strategy="grid", prune="none", seed_check=False, refit=False, keep_models=None)
    cached = {t.recipe.trainable_layers: [] for t in result.trials}
    for trial in result.trials:
        cached[trial.recipe.trainable_layers].append(api.load_run(trial.run_id, workspace).metrics["cached_inputs"])
    # The tiny model has 2 layers: training both leaves the embeddings frozen, so their output is cached.
    assert cached == {0: ["vectors", "vectors"], 2: ["layer-0", "layer-0"]}
    files = sorted((workspace / "cache").iterdir())
    assert len(files) == 4, "training and validation vectors, and states, each shared by the trials of one depth"
    stamps = [f.stat().st_mtime_ns for f in files]

    # The model saved from a head trained on cached vectors is the whole classifier: evaluating it from
    # scratch on the validation texts gives the accuracy recorded during training.
    head_only = next(t for t in result.trials if t.recipe.trainable_layers == 0)
    run = api.load_run(head_only.run_id, workspace)
    task = TextTask.load(toy_csv, None, text_col=None, label_col=None, model=str(tiny_model), val_fraction=0.2,
                         seed=base.seed)
    predicted = run.predict_texts(task.val.texts).labels
    accuracy = sum(p == t for p, t in zip(predicted, task.val.labels, strict=True)) / len(task.val)
    assert accuracy == run.metrics["val_accuracy"]

    other = write_csv(tmp_path / "other.csv", ["text", "label"], sentiment_rows(30, seed=9))
    api.tune(other, model=str(tiny_model), workspace=workspace, recipe=base, budget="1trial", strategy="grid",
             prune="none", seed_check=False, refit=False)
    assert len(list((workspace / "cache").iterdir())) == 6, "other texts: new vectors, not the stale ones"
    assert [f.stat().st_mtime_ns for f in files] == stamps
