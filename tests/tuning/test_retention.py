"""Which models of a finished study stay on disk, and that a study and gc leave only those."""

from __future__ import annotations

import pytest

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.errors import RunNotFoundError
from tuneloop.store.workspace import Workspace
from tuneloop.tuning.retention import models_to_discard, models_to_keep


def row(number: int, value: float | None, reason: str = "move", run: str | None = "auto", **evidence) -> dict:
    return {"number": number, "status": "completed" if value is not None else "pruned", "value": value,
            "reason": reason, "recipe": {"seed": number}, "run_id": f"r{number}" if run == "auto" else run,
            "evidence": evidence}


def test_the_final_model_its_members_and_the_best_few_stay():
    rows = [row(0, 0.70), row(1, 0.90), row(2, 0.85), row(3, 0.60), row(4, None, run=None),
            row(5, 0.80, reason="cross-validation: the recipe of trial 3", run=None),
            row(6, 0.80, reason="refit: the recipe of trial 3"), row(7, 0.70, reason="refit: the recipe of trial 0"),
            row(8, 0.80, reason="ensemble: the final fits of trials 3, 0", members=[6, 7])]
    assert models_to_keep(rows, keep=1) == {"r8", "r6", "r7", "r1"}, "the ensemble, its two members, the best"
    assert models_to_discard(rows, registered={"r3"}, keep=1) == ["r0", "r2"], "r3 is registered"
    assert set(models_to_discard(rows, registered=set(), keep=0)) == {"r0", "r1", "r2", "r3"}


def test_a_study_leaves_its_final_model_and_the_best_few_and_gc_frees_the_rest(tiny_model, toy_csv, tmp_path):
    workspace = tmp_path / "ws"
    result = api.tune(toy_csv, model=str(tiny_model), workspace=workspace, budget="5trials", strategy="random",
                      prune="none", seed_check=False, refit=False, keep_models=2,
                      recipe=Recipe(epochs=1, batch_size=8, patience=0))
    with Workspace.open(workspace) as store:
        kept = [r for r in store.runs() if r.artifact is not None]
        removed = [r for r in store.runs() if r.status == "completed" and r.artifact is None]
        assert len(kept) == 2 and len(removed) == 3, "the final model (the best trial) and the next best stay"
        assert result.best_run.id in {r.id for r in kept}
        assert all(not (store.artifacts / r.id).exists() and "model removed when study" in r.note for r in removed)
        assert all(store.epochs(r.id) for r in removed), "curves and records stay"
    if removed:
        with pytest.raises(RunNotFoundError, match="has no model any more: model removed when study"):
            api.load_run(removed[0].id, workspace)
    assert api.load_run("latest", workspace).id in {r.id for r in kept}

    everything = tmp_path / "all"
    api.tune(toy_csv, model=str(tiny_model), workspace=everything, budget="3trials", strategy="random",
             prune="none", seed_check=False, refit=False, keep_models=None,
             recipe=Recipe(epochs=1, batch_size=8, patience=0))
    fitted = api.fit(toy_csv, model=str(tiny_model), workspace=everything, recipe=Recipe(epochs=1))
    (everything / "checkpoints" / "fit" / fitted.id).mkdir(parents=True)  # as a kill after the last save leaves it
    (everything / "cache").mkdir(exist_ok=True)
    (everything / "cache" / "old.safetensors").write_bytes(b"0" * 4096)
    before = api.disk_usage(everything)
    assert before["models"] > 0 and before["feature cache"] >= 4096
    collected = api.gc(everything, keep_models=0, cache_mb=0)
    with Workspace.open(everything) as store:
        assert sum(r.artifact is not None for r in store.runs()) == 2, "the study's final model, and the fit"
    assert collected.models_removed == 2 and collected.freed["models"] > 0
    assert api.disk_usage(everything)["feature cache"] == 0 and not (everything / "checkpoints" / "fit" / fitted.id
                                                                      ).exists()


def test_the_feature_cache_on_disk_drops_the_least_recently_used_first(tmp_path, monkeypatch):
    import os

    import torch

    from tuneloop.data.feature_cache import FeatureCache

    cache = FeatureCache(tmp_path)
    monkeypatch.setenv("TUNELOOP_CACHE_MB", str(3 * 4096 / 2**20 + 0.001))  # room for three 4 KiB entries
    for i, key in enumerate("abc"):
        cache.get(key, lambda: torch.zeros(1024))
        os.utime(tmp_path / f"{key}.safetensors", ns=(i * 10**9, i * 10**9))
    FeatureCache(tmp_path).get("a", lambda: pytest.fail("read from disk, not computed"))  # a is used again
    cache.get("d", lambda: torch.zeros(1024))
    assert sorted(p.stem for p in tmp_path.glob("*.safetensors")) == ["a", "c", "d"], "b was the least recent"
