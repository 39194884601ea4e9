"""The registry, drift checks, adaptation and the gate end to end through the command line, on scikit-learn's
digits (BSD-licensed with scikit-learn; from the UCI repository): as a table of 64 pixel columns, a base
model on digits 0-4, then new data of digits 5-9; and as images for a small CNN. Texts use the tiny random
BERT of conftest.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import run_tuneloop, sentiment_rows, write_csv

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.continual import versions
from tuneloop.continual.update import adapt
from tuneloop.data.images import write_image_folder
from tuneloop.errors import ConfigError, DataError
from tuneloop.models import get_adapter
from tuneloop.store.registry import Registry
from tuneloop.store.workspace import Workspace

sklearn_datasets = pytest.importorskip("sklearn.datasets")

BASE = ["--epochs", "20", "--lr", "1e-3", "--patience", "5", "--quiet"]


def tuneloop(*args: str) -> subprocess.CompletedProcess:
    return run_tuneloop(*args)


@pytest.fixture(scope="module")
def digit_tables(tmp_path_factory) -> dict[str, Path]:
    """Digits 0-4 (the base's data), digits 5-9 (new classes), the same 5-9 rows with shuffled labels, and
    more rows of digits 0-4 (no drift)."""
    folder = tmp_path_factory.mktemp("digit-tables")
    frame = sklearn_datasets.load_digits(as_frame=True).frame.sample(frac=1, random_state=0).reset_index(drop=True)
    frame["target"] = frame["target"].map(lambda d: f"d{d}")
    old = frame[frame.target.isin([f"d{i}" for i in range(5)])]
    new = frame[~frame.target.isin([f"d{i}" for i in range(5)])]
    poisoned = new.copy()
    poisoned["target"] = np.random.default_rng(0).permutation(poisoned["target"].to_numpy())
    paths = {"old": folder / "old.csv", "more_old": folder / "more_old.csv", "new": folder / "new.csv",
             "poisoned": folder / "poisoned.csv"}
    old.iloc[:700].to_csv(paths["old"], index=False)
    old.iloc[700:].to_csv(paths["more_old"], index=False)
    new.to_csv(paths["new"], index=False)
    poisoned.to_csv(paths["poisoned"], index=False)
    return paths


@pytest.fixture(scope="module")
def registered(digit_tables, tmp_path_factory) -> Path:
    """A workspace whose model 'digits' has version 1, trained on digits 0-4, in production."""
    workspace = tmp_path_factory.mktemp("registered") / "ws"
    fitted = tuneloop("fit", str(digit_tables["old"]), "--workspace", str(workspace), "--json", *BASE)
    assert fitted.returncode == 0, fitted.stderr
    run = json.loads(fitted.stdout)["run"]
    done = tuneloop("registry", "register", "digits", run, "--workspace", str(workspace))
    assert done.returncode == 0, done.stderr
    assert "digits:1 (candidate)" in done.stdout
    done = tuneloop("registry", "promote", "digits:1", "--workspace", str(workspace))
    assert done.returncode == 0, done.stderr
    return workspace


def copy_of(workspace: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "ws"
    shutil.copytree(workspace, target)
    return target


def test_a_registered_version_keeps_bounded_samples_of_its_data(registered):
    with Workspace.open(registered) as store:
        version = Registry(store).get("digits")
    assert version.version == 1 and version.stage == "production"
    assert {"replay.json", "holdout.json"} <= {p.name for p in version.folder.iterdir()}
    replay = json.loads((version.folder / "replay.json").read_text())
    assert 0 < len(replay["targets"]) <= 2000 and set(replay["targets"]) == {f"d{i}" for i in range(5)}
    assert version.lineage["train_fingerprint"] and version.lineage["data_options"]["task"] == "tabular"


def test_drift_finds_new_classes_and_no_drift_in_more_of_the_same(registered, digit_tables):
    same = tuneloop("drift", "digits", str(digit_tables["more_old"]), "--workspace", str(registered), "--json")
    assert same.returncode == 0, same.stderr
    report = json.loads(same.stdout)
    assert report["verdict"] == "no drift", report
    assert all(e["shifted"] is False for e in report["evidence"]), "JSON booleans, not strings"
    assert {e["name"] for e in report["evidence"]} == {"labels", "inputs", "confidence", "accuracy"}

    moved = tuneloop("drift", "digits", str(digit_tables["new"]), "--workspace", str(registered), "--json")
    report = json.loads(moved.stdout)
    assert report["new_classes"] == [f"d{i}" for i in range(5, 10)]
    assert report["verdict"].startswith("drift") and "tuneloop adapt digits" in report["recommendation"]
    inputs = next(e for e in report["evidence"] if e["name"] == "inputs")
    assert inputs["shifted"] is True and inputs["p_value"] < 0.01

    unlabelled = tuneloop("drift", "digits", str(digit_tables["new"]), "--unlabelled", "--workspace",
                          str(registered), "--json")
    names = {e["name"] for e in json.loads(unlabelled.stdout)["evidence"]}
    assert names == {"inputs", "confidence"}, "without labels only the inputs and the confidence are compared"


def baseline_spy(monkeypatch) -> list:
    """The examples each drift check embeds, in order: its baseline first, then the new inputs."""
    from tuneloop.continual import drift as drift_module

    embedded: list = []
    embeddings = drift_module.embeddings

    def spy(run, examples):
        embedded.append(examples)
        return embeddings(run, examples)

    monkeypatch.setattr(drift_module, "embeddings", spy)
    return embedded


def test_drift_compares_new_inputs_with_examples_the_model_never_trained_on(registered, digit_tables,
                                                                           monkeypatch):
    """Not with its training sample, which the model represents more tightly than any new data; the holdout
    of a plainly registered version chose it, and the accuracy evidence says the baseline is optimistic."""
    from tuneloop.continual.drift import drift
    from tuneloop.continual.samples import load_examples

    embedded = baseline_spy(monkeypatch)
    report = drift("digits", digit_tables["more_old"], workspace=registered)
    with Workspace.open(registered) as store:
        folder = Registry(store).get("digits").folder
    holdout, replay = load_examples(folder, "holdout"), load_examples(folder, "replay")
    assert set(embedded[0].locations) <= set(holdout.locations)
    assert not set(embedded[0].locations) & set(replay.locations), "no training example in the baseline"
    accuracy = next(e for e in report.evidence if e.name == "accuracy")
    assert accuracy.details["caveat"].startswith("optimistic baseline: digits:1's holdout is a sample of the "
                                                 "validation data that chose its best epoch")
    assert "optimistic baseline" in accuracy.summary


def test_adapt_grows_the_head_keeps_the_old_classes_and_promotes_through_the_gate(registered, digit_tables, tmp_path,
                                                                                   monkeypatch):
    workspace = copy_of(registered, tmp_path)
    done = tuneloop("adapt", "digits", str(digit_tables["new"]), "--workspace", str(workspace), "--json",
                    "--tolerance", "0.05")
    result = json.loads(done.stdout)
    assert result["new_classes"] == [f"d{i}" for i in range(5, 10)]
    checks = {c["name"]: c for c in result["gate"]["checks"]}
    assert checks["new data gain"]["passed"] and checks["new data gain"]["numbers"]["low"] > 0.5
    assert checks["old data kept"]["numbers"]["drop"] <= 0.05
    assert result["gate"]["caveat"] == "", "an update is judged on examples no trial saw"
    assert result["promoted"] and done.returncode == 0, done.stderr
    with Workspace.open(workspace) as store:
        registry = Registry(store)
        production = registry.get("digits")
        model = versions.version_run(store, production)
        assert production.version == 2 and production.parent == 1
        assert registry.get("digits", 1).stage == "archived"
        assert {"gate_new.json", "gate_old.json"} <= {p.name for p in production.folder.iterdir()}
    assert model.classes == [f"d{i}" for i in range(10)], "old classes first, in their order, then the new"
    evaluated = api.evaluate(model, digit_tables["more_old"])
    assert evaluated.metrics["accuracy"] > 0.9, "the updated model still knows digits 0-4"

    from tuneloop.continual.drift import drift
    from tuneloop.continual.samples import load_examples

    embedded = baseline_spy(monkeypatch)  # an update's drift baseline: the examples its gate kept, unseen by any trial
    report = drift("digits", digit_tables["more_old"], workspace=workspace)
    gate = [load_examples(production.folder, part) for part in ("gate_new", "gate_old")]
    assert len(embedded[0]) == min(500, sum(map(len, gate)))
    assert next(e for e in report.evidence if e.name == "accuracy").details["caveat"] == ""

    back = tuneloop("registry", "rollback", "digits", "--workspace", str(workspace))
    assert back.returncode == 0 and "digits:1 is production again" in back.stdout
    history = json.loads(tuneloop("registry", "show", "digits", "--workspace", str(workspace), "--json").stdout)
    assert [e["action"] for e in history["history"]][-2:] == ["promote", "rollback"]


def test_a_plainly_registered_candidate_is_judged_with_the_caveat_that_its_holdout_chose_it(
        registered, digit_tables, tmp_path):
    workspace = copy_of(registered, tmp_path)
    fitted = tuneloop("fit", str(digit_tables["more_old"]), "--workspace", str(workspace), "--json", *BASE)
    assert fitted.returncode == 0, fitted.stderr
    versions.register("digits", json.loads(fitted.stdout)["run"], workspace=workspace)
    with Workspace.open(workspace) as store:
        registry = Registry(store)
        decision = versions.judge(store, registry.get("digits", 2), registry.get("digits", 1))
    assert decision.caveat.startswith("optimistic: digits:2's new holdout is a sample of the validation data")
    assert decision.to_dict()["caveat"] == decision.caveat


def test_a_poisoned_update_is_refused_and_production_is_unchanged(registered, digit_tables, tmp_path):
    workspace = copy_of(registered, tmp_path)
    done = tuneloop("adapt", "digits", str(digit_tables["poisoned"]), "--workspace", str(workspace), "--json")
    assert done.returncode == 3, done.stderr
    result = json.loads(done.stdout)
    assert not result["promoted"] and not result["gate"]["promote"]
    failed = {c["name"] for c in result["gate"]["checks"] if not c["passed"]}
    assert "better than chance" in failed
    with Workspace.open(workspace) as store:
        registry = Registry(store)
        assert registry.get("digits").version == 1
        assert registry.get("digits", 2).stage == "candidate"

    refused = tuneloop("registry", "promote", "digits:2", "--workspace", str(workspace))
    assert refused.returncode == 3 and "FAILED" in refused.stdout
    forced = tuneloop("registry", "promote", "digits:2", "--force", "--workspace", str(workspace))
    assert forced.returncode == 2 and "--reason" in forced.stderr
    forced = tuneloop("registry", "promote", "digits:2", "--force", "--reason", "checking the gate",
                      "--workspace", str(workspace))
    assert forced.returncode == 0, forced.stderr
    shown = json.loads(tuneloop("registry", "show", "digits", "--workspace", str(workspace), "--json").stdout)
    assert shown["ref"] == "digits:2" and shown["reason"] == "checking the gate"
    assert shown["history"][-1]["forced"]


def test_a_plain_fine_tune_forgets_where_adapt_keeps_the_old_classes(registered, digit_tables, tmp_path):
    workspace = copy_of(registered, tmp_path)
    kept = adapt("digits", digit_tables["new"], workspace=workspace, promote=False, budget="1trials")
    plain = adapt("digits", digit_tables["new"], workspace=workspace, promote=False, budget="1trials",
                  replay_ratio=0.0, l2sp=0.0)
    assert kept.trials[0].outcome.old_drop < plain.trials[0].outcome.old_drop
    with Workspace.open(workspace) as store:
        kept_model = versions.version_run(store, kept.version)
        plain_model = versions.version_run(store, plain.version)
    old = api.evaluate(kept_model, digit_tables["more_old"]).metrics["accuracy"]
    forgot = api.evaluate(plain_model, digit_tables["more_old"]).metrics["accuracy"]
    assert old > forgot + 0.02, (old, forgot)


def test_bad_options_and_unknown_names_fail_before_anything_is_written(registered, digit_tables, tmp_path):
    workspace = copy_of(registered, tmp_path)
    with pytest.raises(ConfigError) as error:
        adapt("digits", digit_tables["new"], workspace=workspace, tolerance=2.0, replay_ratio=1.5, force=True)
    assert len(error.value.problems) == 3
    unknown = tuneloop("adapt", "nope", str(digit_tables["new"]), "--workspace", str(workspace))
    assert unknown.returncode == 2 and "digits" in unknown.stderr, "the error lists the registered names"
    with Workspace.open(workspace) as store:
        assert len(Registry(store).versions("digits")) == 1


def test_registering_a_run_whose_data_has_changed_is_refused(digit_tables, tmp_path):
    data = tmp_path / "old.csv"
    data.write_text(digit_tables["old"].read_text())
    workspace = tmp_path / "ws"
    run = api.fit(data, workspace=workspace, epochs=2)
    data.write_text(digit_tables["more_old"].read_text())
    with pytest.raises(DataError, match="has changed"):
        versions.register("digits", run.id, workspace=workspace)
    with pytest.raises(DataError, match="not the data run"):
        versions.register("digits", run.id, workspace=workspace, data=digit_tables["more_old"])
    version = versions.register("digits", run.id, workspace=workspace, data=digit_tables["old"])
    assert version.version == 1


def test_a_text_model_grown_to_new_classes_scores_its_old_classes_as_before(tiny_model, tmp_path):
    data = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(20))
    run = api.fit(data, model=str(tiny_model), workspace=tmp_path / "ws", epochs=1, trainable_layers=1)
    recipe = Recipe(trainable_layers=1)
    grown, tokenizer = get_adapter("hf_text").load_start(str(run.path), run.classes, [*run.classes, "neutral"],
                                                         recipe)
    saved, _ = run.model()
    batch = tokenizer(["good great", "awful sad"], return_tensors="pt", padding=True, return_token_type_ids=False)
    grown.eval()
    with torch.no_grad():
        before = saved(**batch)
        after = grown(**batch)
    assert after.shape[1] == 3
    assert torch.allclose(after[:, :2], before, atol=1e-6)
    names = set(grown.pretrained_parameter_names())
    assert "head.weight" in names and any(n.startswith("encoder.") for n in names), "L2-SP pulls toward all of it"


def test_text_and_images_adapt_with_new_classes(tiny_model, tmp_path):
    rows = sentiment_rows(30)
    old = write_csv(tmp_path / "old.csv", ["text", "label"], rows)
    new_rows = [(" ".join(["meh", "okay", "so-so"][i % 3] for _ in range(4)), "neutral") for i in range(30)]
    new = write_csv(tmp_path / "new.csv", ["text", "label"], new_rows + rows[:30])
    workspace = tmp_path / "ws"
    run = api.fit(old, model=str(tiny_model), workspace=workspace, epochs=2, trainable_layers=0,
                  learning_rate=1e-2)
    versions.register("sentiment", run.id, workspace=workspace)
    versions.promote("sentiment:1", workspace=workspace)
    result = adapt("sentiment", new, workspace=workspace, budget="1trials", promote=False)
    assert result.new_classes == ["neutral"]
    with Workspace.open(workspace) as store:
        assert versions.version_run(store, result.version).classes == ["neg", "pos", "neutral"]

    data = sklearn_datasets.load_digits()
    pixels = (data.images * 255 / 16).round().astype(np.uint8)
    labels = [str(t) for t in data.target]
    first = [i for i in range(400) if data.target[i] < 3]
    second = [i for i in range(400, 800) if data.target[i] in (3, 4)]
    write_image_folder(pixels[first], [labels[i] for i in first], tmp_path / "old_images")
    write_image_folder(pixels[second], [labels[i] for i in second], tmp_path / "new_images")
    run = api.fit(tmp_path / "old_images", model="small-cnn", workspace=workspace, epochs=4, hidden_layers=2,
                  hidden_units=16, learning_rate=3e-3)
    versions.register("images", run.id, workspace=workspace)
    versions.promote("images:1", workspace=workspace)
    report = tuneloop("drift", "images", str(tmp_path / "new_images"), "--workspace", str(workspace), "--json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["new_classes"] == ["3", "4"]
    result = adapt("images", tmp_path / "new_images", workspace=workspace, budget="1trials", promote=False)
    with Workspace.open(workspace) as store:
        assert versions.version_run(store, result.version).classes == ["0", "1", "2", "3", "4"]
    assert result.decision.checks[0].passed, result.decision.checks[0].summary


def test_fit_can_start_from_a_saved_text_run(tiny_model, tmp_path):
    base = api.fit(write_csv(tmp_path / "a.csv", ["text", "label"], sentiment_rows(20)), model=str(tiny_model),
                   workspace=tmp_path / "ws", epochs=1, trainable_layers=1)
    rows = sentiment_rows(20, seed=1) + [("meh okay so-so fine", "neutral")] * 20
    run = api.fit(write_csv(tmp_path / "b.csv", ["text", "label"], rows), model=str(base.path),
                  workspace=tmp_path / "ws", epochs=1, trainable_layers=1)
    assert run.classes == ["neg", "neutral", "pos"], "a fit (not an update) takes the data's classes, sorted"
    assert api.load_run(run.id, tmp_path / "ws").predict_texts(["good great"]).labels[0] in run.classes


def test_a_registered_study_winner_records_its_study(digit_tables, tmp_path):
    workspace = tmp_path / "ws"
    study = api.tune(digit_tables["old"], budget="2trials", workspace=workspace, seed_check=False,
                     recipe=Recipe(epochs=5, learning_rate=1e-3))
    version = versions.register("digits", study.best_run.id, workspace=workspace)
    assert version.lineage["study"] == study.study_id
    assert version.lineage["run"] == study.best_run.id and version.lineage["recipe"]["epochs"] >= 1


def test_updates_chain_each_keeping_what_came_before(tmp_path):
    """Digits 0-3, then 4-6, then 7-9: the third version knows all ten, and its kept samples hold them all."""
    frame = sklearn_datasets.load_digits(as_frame=True).frame.sample(frac=1, random_state=1).reset_index(drop=True)
    frame["target"] = frame["target"].map(lambda d: f"d{d}")
    parts = {}
    for name, digits in (("a", range(0, 4)), ("b", range(4, 7)), ("c", range(7, 10))):
        parts[name] = tmp_path / f"{name}.csv"
        frame[frame.target.isin([f"d{i}" for i in digits])].to_csv(parts[name], index=False)
    workspace = tmp_path / "ws"
    run = api.fit(parts["a"], workspace=workspace, epochs=20, learning_rate=1e-3, patience=5)
    versions.register("digits", run.id, workspace=workspace)
    versions.promote("digits:1", workspace=workspace)
    second = adapt("digits", parts["b"], workspace=workspace)
    assert second.promoted, second.decision.to_dict()
    # The third is judged, not promoted: whether 139 old examples show its loss within the tolerance is the
    # gate's business (tested on its own); the chain of versions and samples is this test's.
    third = adapt("digits", parts["c"], workspace=workspace, promote=False)
    assert not third.promoted and [c.name for c in third.decision.checks][:2] == ["new data gain", "old data kept"]
    assert third.parent.ref == "digits:2" and third.version.parent == 2
    with Workspace.open(workspace) as store:
        final = versions.version_run(store, third.version)
        replay = json.loads((third.version.folder / "replay.json").read_text())
        holdout = json.loads((third.version.folder / "holdout.json").read_text())
    assert final.classes == [f"d{i}" for i in range(10)]
    assert set(replay["targets"]) == set(final.classes) and set(holdout["targets"]) == set(final.classes)
    assert api.evaluate(final, parts["a"]).metrics["accuracy"] > 0.9, "the first digits survive two updates"
