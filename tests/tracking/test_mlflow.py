"""Tracking in MLflow, live (--track) and afterwards (export), read back from a real local tracking store (SQLite)
with MLflow's own client: parameters, per-epoch metrics, tags, nesting and models."""

from __future__ import annotations

import json
import os
import sys

import pytest
from tests.conftest import run_tuneloop, sentiment_rows, write_csv

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # before mlflow is imported: it would otherwise report usage
mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install 'tuneloop[mlflow]'")

from mlflow.tracking import MlflowClient  # noqa: E402 (after the skip)

from tuneloop import api  # noqa: E402
from tuneloop.config import Recipe  # noqa: E402
from tuneloop.errors import ConfigError, TuneloopError  # noqa: E402
from tuneloop.store.workspace import Workspace  # noqa: E402
from tuneloop.tracking.mlflow_export import open_exporter  # noqa: E402
from tuneloop.tracking.target import TrackTarget  # noqa: E402

TINY = ["--epochs", "2", "--batch-size", "8", "--patience", "0"]
# MLflow's own use of SQLAlchemy, nothing of tuneloop's.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    """One tracking store for the module (making its tables takes seconds), its experiment's artifacts under the
    same temporary folder rather than in the working folder; each test tells its runs apart by their tags."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("tuneloop", artifact_location=(folder / "artifacts").as_uri())
    return uri


def runs_tagged(client: MlflowClient, **tags: str) -> list:
    """The runs of the 'tuneloop' experiment with these tuneloop.* tags."""
    experiment = client.get_experiment_by_name("tuneloop").experiment_id
    where = " AND ".join(f"tags.`tuneloop.{key}` = '{value}'" for key, value in tags.items())
    return client.search_runs([experiment], filter_string=where)


def test_a_tracked_study_is_a_run_with_a_nested_run_per_trial(tiny_model, toy_csv, workspace, tracking_uri):
    done = run_tuneloop("tune", toy_csv, "--model", tiny_model, "--workspace", workspace, "--budget", "2trials",
                        "--strategy", "random", "--prune", "none", "--no-seed-check", "--no-refit",
                        "--keep-models", "0", *TINY, "--track", f"mlflow:{tracking_uri}", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    study, trials = result["study"], result["trials"]
    client = MlflowClient(tracking_uri)

    [parent] = runs_tagged(client, study_id=study, type="study")
    assert parent.info.status == "FINISHED" and parent.data.tags["tuneloop.strategy"] == "random"
    assert parent.data.tags["tuneloop.stop_reason"] == result["stop_reason"]
    assert parent.data.tags["tuneloop.best_run_id"] == result["best_run"]
    assert parent.data.params["budget"] == "2trials"
    children = {int(r.data.tags["tuneloop.trial"]): r for r in runs_tagged(client, study_id=study, type="trial")}
    with Workspace.open(workspace) as store:
        epochs_of = {t["number"]: store.epochs(t["run"]) for t in trials}
    assert sorted(children) == [t["number"] for t in trials] == [0, 1]
    for trial in trials:
        run = children[trial["number"]]
        tags, params = run.data.tags, run.data.params
        assert tags["mlflow.parentRunId"] == parent.info.run_id  # nested under the study
        assert run.info.status == "FINISHED" and tags["tuneloop.run_id"] == trial["run"]
        assert tags["tuneloop.diagnosis"] == trial["diagnosis"] and tags["tuneloop.reason"] == trial["reason"]
        assert {k: params[k] for k in ("learning_rate", "epochs", "trainable_layers")} == {
            k: str(trial["recipe"][k]) for k in ("learning_rate", "epochs", "trainable_layers")}
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [(m.step, m.value) for m in history] == [(e["epoch"], e["val_loss"])
                                                        for e in epochs_of[trial["number"]]]  # a step each
        assert {"train_loss", "val_accuracy", "final/val_accuracy", "objective"} <= set(run.data.metrics)
        assert run.data.metrics["objective"] == pytest.approx(trial["value"])
    # Only the final model stays on disk (--keep-models 0), and only it is uploaded.
    with_model = {n for n, run in children.items() if client.list_artifacts(run.info.run_id, "model")}
    assert with_model == {n for n, t in enumerate(trials) if t["run"] == result["best_run"]}
    best = children[next(iter(with_model))]
    assert {"model/labels.json", "model/recipe.yaml"} <= {a.path for a in client.list_artifacts(best.info.run_id,
                                                                                                  "model")}
    gone = children[1 - next(iter(with_model))]
    assert "model removed" in gone.data.tags["tuneloop.model_note"]

    # Exporting afterwards is the same path: it finds every run again and makes none.
    exported = api.export(study, to=f"mlflow:{tracking_uri}", workspace=workspace)
    assert exported.new == 0 and exported.run_id == parent.info.run_id
    assert len(runs_tagged(client, study_id=study)) == 3
    for number, run in children.items():  # no point twice
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == len(epochs_of[number])


def test_a_study_and_a_fit_exported_afterwards_and_again(tiny_model, toy_csv, workspace, tracking_uri):
    result = api.tune(toy_csv, model=str(tiny_model), workspace=workspace, budget="2trials", strategy="random",
                      prune="none", seed_check=False, refit=False, recipe=Recipe(epochs=1, batch_size=8, patience=0))
    run = api.fit(toy_csv, model=str(tiny_model), workspace=workspace, epochs=2, batch_size=8)
    client = MlflowClient(tracking_uri)
    assert runs_tagged(client, study_id=result.study_id) == []  # nothing tracked live

    for attempt in range(2):
        done = run_tuneloop("export", "mlflow", result.study_id, "--uri", tracking_uri, "--workspace", workspace,
                            "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["new_runs"] == (3 if attempt == 0 else 0)
        done = run_tuneloop("export", "mlflow", run.id, "--uri", tracking_uri, "--workspace", workspace)
        assert done.returncode == 0, done.stderr
        assert f"Exported run {run.id} to MLflow" in done.stdout
        assert len(runs_tagged(client, study_id=result.study_id)) == 3
        assert len(runs_tagged(client, run_id=run.id)) == 1

    done = run_tuneloop("export", "mlflow", "no-such-thing", "--uri", tracking_uri, "--workspace", workspace)
    assert done.returncode == 2 and f"Recent studies: {result.study_id}." in done.stderr

    [parent] = runs_tagged(client, study_id=result.study_id, type="study")
    for child in runs_tagged(client, study_id=result.study_id, type="trial"):
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["tuneloop.reason"] == "random sample"
    [fitted] = runs_tagged(client, run_id=run.id)
    assert fitted.data.tags["tuneloop.type"] == "run" and "mlflow.parentRunId" not in fitted.data.tags
    assert fitted.data.params["epochs"] == "2" and fitted.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(fitted.info.run_id, "train_loss")] == [1, 2]
    assert fitted.data.metrics["final/val_accuracy"] == pytest.approx(run.metrics["val_accuracy"])
    assert "model/model.safetensors" in {a.path for a in client.list_artifacts(fitted.info.run_id, "model")}


def test_fit_tracks_to_mlflows_own_default_store(tiny_model, toy_csv, workspace, tracking_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # what a plain --track mlflow uses
    done = run_tuneloop("fit", toy_csv, "--model", tiny_model, "--workspace", workspace, "--epochs", "1",
                        "--track", "mlflow", "--json")
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run"]
    [tracked] = runs_tagged(MlflowClient(tracking_uri), run_id=run_id)
    assert tracked.info.status == "FINISHED" and tracked.data.params["epochs"] == "1"
    from mlflow.telemetry.utils import is_telemetry_disabled

    assert is_telemetry_disabled()  # nothing of MLflow's reaches the network


def test_an_update_tracks_the_gates_decision_on_its_run(tiny_model, tmp_path, tracking_uri):
    from tuneloop.continual import versions

    rows = sentiment_rows(30)
    old = write_csv(tmp_path / "old.csv", ["text", "label"], rows)
    new = write_csv(tmp_path / "new.csv", ["text", "label"], sentiment_rows(30, seed=1))
    workspace = tmp_path / "ws"
    run = api.fit(old, model=str(tiny_model), workspace=workspace, epochs=1, trainable_layers=0, learning_rate=1e-2)
    versions.register("sentiment", run.id, workspace=workspace)
    versions.promote("sentiment:1", workspace=workspace)
    done = run_tuneloop("adapt", "sentiment", new, "--budget", "1trials", "--workspace", workspace, "--track",
                        f"mlflow:{tracking_uri}", "--json")
    assert done.returncode in (0, 3), done.stderr  # 3: the gate refused (a finding, not an error)
    result = json.loads(done.stdout)
    client = MlflowClient(tracking_uri)
    [parent] = runs_tagged(client, study_id=result["study"], type="study")
    tags = parent.data.tags
    assert tags["tuneloop.strategy"] == "adapt" and tags["tuneloop.version"] == result["version"]
    assert tags["tuneloop.gate"] == ("passed" if result["gate"]["promote"] else "refused")
    assert tags["tuneloop.decision"].startswith("promoted" if result["promoted"] else "not promoted")
    assert {f"tuneloop.gate.{'_'.join(c['name'].split())}" for c in result["gate"]["checks"]} <= set(tags)
    [trial] = runs_tagged(client, study_id=result["study"], type="trial")
    assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert trial.data.tags["tuneloop.run_id"] == result["trials"][0]["run"]
    assert trial.data.params["replay_ratio"] == str(result["trials"][0]["knobs"]["replay_ratio"])
    assert "evidence/new_gain" in trial.data.metrics


def test_a_bad_track_value_stops_before_anything_is_trained(toy_csv, workspace):
    with pytest.raises(ConfigError, match=r"The 'track' parameter must be 'mlflow' or 'mlflow:URI'\. Got 'wandb' "
                                          r"instead\."):
        api.fit(toy_csv, workspace=workspace, track="wandb")
    done = run_tuneloop("tune", toy_csv, "--workspace", workspace, "--track", "mlflow:")
    assert done.returncode == 2
    assert "The 'track' parameter must be 'mlflow' or 'mlflow:URI'. Got 'mlflow:' instead." in done.stderr
    assert not workspace.exists()


def test_without_mlflow_the_error_names_the_extra_to_install(toy_csv, workspace, monkeypatch):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(TuneloopError, match=r"pip install 'tuneloop\[mlflow\]'"):
        api.fit(toy_csv, workspace=workspace, track="mlflow")
    assert not workspace.exists()
    with pytest.raises(TuneloopError, match=r"pip install 'tuneloop\[mlflow\]'"):
        open_exporter(TrackTarget("mlflow", "sqlite:///never-made.db"))
