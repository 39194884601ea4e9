"""What runs, trials and studies become in a tracker, the --track value, and a tracker that fails: no tracking store
needed."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from tuneloop.errors import ConfigError
from tuneloop.tracking.mlflow_export import StudyTracker, quiet_mlflow
from tuneloop.tracking.records import (
    UpdateDecision,
    epoch_metrics,
    milliseconds,
    move,
    study_run,
    trial_run,
    update_tags,
)
from tuneloop.tracking.target import TrackTarget, parse_track


@pytest.mark.parametrize("value, target", [
    (None, None), ("mlflow", TrackTarget("mlflow")), ("mlflow:sqlite:///runs/m.db", TrackTarget("mlflow",
                                                                                              "sqlite:///runs/m.db")),
    ("mlflow:http://127.0.0.1:5000", TrackTarget("mlflow", "http://127.0.0.1:5000"))])
def test_track_names_mlflow_and_its_uri_whole(value, target):
    assert parse_track(value) == target


@pytest.mark.parametrize("value", ["wandb", "mlflow:", "MLflow", "", "mlflow: ", 3])
def test_a_bad_track_value_is_named(value):
    with pytest.raises(ConfigError) as error:
        parse_track(value)
    assert str(error.value) == f"The 'track' parameter must be 'mlflow' or 'mlflow:URI'. Got {value!r} instead."


def test_a_move_lists_each_changed_knob():
    before = {"weight_decay": 0.01, "dropout": 0.1, "epochs": 3}
    assert move(before, {**before, "weight_decay": 0.05, "dropout": 0.2}) == ("weight_decay 0.01 -> 0.05, "
                                                                                "dropout 0.1 -> 0.2")
    assert move(before, before) == ""


def test_a_trial_says_its_diagnosis_and_the_move_that_made_it():
    row = {"number": 1, "reason": "overfitting: val loss rose -> more weight decay: weight_decay 0.01 -> 0.05",
           "status": "running", "value": None, "run_id": None, "parent": 0, "diagnosis": None, "evidence": {},
           "recipe": {"weight_decay": 0.05, "epochs": 3}}
    started = trial_run("s", row, None, [], {"weight_decay": 0.01, "epochs": 3}, "2026-01-31T12:00:00+0000")
    assert started.identity == {"tuneloop.study_id": "s", "tuneloop.trial": "1"} and started.status == "RUNNING"
    assert started.tags["tuneloop.move"] == "weight_decay 0.01 -> 0.05" and started.tags["tuneloop.parent_trial"] == "0"
    assert started.params == {"weight_decay": "0.05", "epochs": "3"} and started.metrics == []
    pruned = {**row, "status": "pruned", "value": 0.5, "diagnosis": "overfitting", "evidence": {"best_epoch": 1},
              "diagnosis_summary": "val loss rose 2 epochs", "seconds": 2.0}
    ended = trial_run("s", pruned, None, [], {"weight_decay": 0.01, "epochs": 3}, "2026-01-31T12:00:00+0000")
    assert ended.status == "FINISHED" and ended.tags["tuneloop.status"] == "pruned"
    assert ended.tags["tuneloop.diagnosis"] == "overfitting" and ended.params == started.params
    assert {(m.key, m.value) for m in ended.metrics} == {("objective", 0.5), ("evidence/best_epoch", 1.0)}
    assert ended.end_ms - ended.start_ms == 2_000


def test_epochs_are_steps_stamped_by_their_own_seconds():
    rows = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.6, "val_accuracy": 0.5, "val_rmse": None, "seconds": 1.5},
            {"epoch": 2, "train_loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.8, "val_rmse": None, "seconds": 2.0}]
    metrics = epoch_metrics(rows, 1_000)
    assert {(m.key, m.step, m.value, m.timestamp_ms) for m in metrics if m.key == "val_loss"} == {
        ("val_loss", 1, 0.6, 2_500), ("val_loss", 2, 0.4, 4_500)}
    assert {m.key for m in metrics} == {"train_loss", "val_loss", "val_accuracy", "epoch_seconds"}  # no None values


def test_a_study_logs_its_numbers_at_the_count_of_trials_ended():
    study = {"id": "s", "created_at": "2026-01-31T12:00:00+0000", "strategy": "guided", "metric": "macro_f1",
             "status": "finished", "options": {"budget": "2trials", "recipe": {"epochs": 3}, "target": None},
             "spent_seconds": 10.0, "stop_reason": "the budget of 2 trials is spent", "choice": None}
    trials = [{"number": n, "reason": "random sample", "status": "completed", "value": v, "run_id": f"r{n}",
               "recipe": {}, "evidence": {}} for n, v in ((0, 0.5), (1, 0.75))]
    tracked = study_run(study, trials)
    assert tracked.params == {"budget": "2trials"}  # no nested recipe, no unset option
    assert {(m.key, m.step, m.value) for m in tracked.metrics} == {
        ("spent_seconds", 2, 10.0), ("trials_ended", 2, 2), ("best_objective", 2, 0.75)}
    assert tracked.tags["tuneloop.best_run_id"] == "r1" and tracked.status == "FINISHED"
    assert tracked.end_ms == milliseconds(study["created_at"]) + 10_000


def test_an_update_says_whether_it_was_promoted_and_what_the_gate_found():
    gate = {"promote": False, "checks": [{"name": "new data gain", "passed": False, "summary": "gain +0.01, noise",
                                          "numbers": {"n": 40, "low": -0.02}}], "caveat": ""}
    tags = update_tags(UpdateDecision("m:2", "r", "candidate", gate, promoted=False))
    assert tags["tuneloop.decision"] == "not promoted: m:2" and tags["tuneloop.gate"] == "refused"
    assert tags["tuneloop.gate.new_data_gain"] == "failed: gain +0.01, noise"
    forced = update_tags(UpdateDecision("m:2", "r", "production", gate, promoted=True, forced=True))
    assert forced["tuneloop.decision"] == "promoted by force: m:2"


def test_a_tracking_store_that_fails_costs_a_warning_not_the_study():
    class Unreachable:
        def export_trial(self, *args, **kwargs):
            raise ConnectionError("tracking server down")

    tracker = StudyTracker(Unreachable(), store=None, study_id="study-x")
    with pytest.warns(UserWarning, match=r"ConnectionError: tracking server down.*'tuneloop export mlflow study-x'"):
        tracker.on_trial_end(SimpleNamespace(number=0), None)


def test_mlflows_telemetry_is_turned_off_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    quiet_mlflow()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    quiet_mlflow()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"
