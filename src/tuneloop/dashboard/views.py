"""What each dashboard page shows, read from the workspace through the same functions as the command line and
the study report (``Workspace``, ``Registry``, ``report.html.read_study``), as plain dicts and HTML fragments.

Nothing here writes: the dashboard opens the workspace read-only, and its only writes, promote and roll back,
go through ``continual.versions`` like the command line's.
"""

from __future__ import annotations

import time
from typing import Any

from tuneloop.config import LOWER_IS_BETTER
from tuneloop.report import html as report
from tuneloop.store.registry import Registry
from tuneloop.store.workspace import RunRecord, Workspace
from tuneloop.tuning.seeds import best_trial, is_seed_check, scored

# Scores a run's page and the runs table show, in this order, where the run recorded them.
SCORES = (("val accuracy", "val_accuracy"), ("val macro-F1", "val_macro_f1"), ("val ROC AUC", "val_roc_auc"),
          ("val MASE", "val_mase"), ("val sMAPE", "val_smape"), ("val RMSE", "val_rmse"), ("val MAE", "val_mae"),
          ("val R²", "val_r2"), ("val loss", "val_loss"))


def study_status(row: dict[str, Any], now: float | None = None) -> str:
    """A study's status as a reader should take it: a running study whose driver has not renewed its lease is
    shown as silent (the database says running until a writer marks it interrupted; the dashboard never writes)."""
    lease = row.get("lease_until")
    if row["status"] == "running" and lease is not None and lease < (now or time.time()):
        return "running (no heartbeat)"
    return row["status"]


def study_summaries(store: Workspace) -> list[dict[str, Any]]:
    """Every study, latest first: what it is, where it stands and its best value so far."""
    found = []
    for row in reversed(store.studies()):
        trials = store.trials(row["id"])
        best = best_trial(trials)
        found.append({"id": row["id"], "strategy": row["strategy"], "metric": row["metric"],
                      "status": study_status(row), "created_at": row["created_at"], "trials": len(trials),
                      "completed": sum(scored(t) for t in trials), "stop_reason": row["stop_reason"] or "",
                      "best": None if best is None else best["value"], "spent": row["spent_seconds"],
                      "data": row["options"].get("data")})
    return found


def study_curves(study: report.StudyRecord) -> dict[str, Any]:
    """Each trial's per-epoch curves, for the study page's charts; the best trial is marked."""
    column = report.objective_column(study.metric)
    best = study.best
    lines = []
    for trial in study.trials:
        epochs = study.epochs.get(trial["run_id"]) or []
        if not epochs:
            continue
        lines.append({"number": trial["number"], "label": report._trial_name(trial, best),
                      "best": best is not None and trial["number"] == best["number"],
                      "seed_check": is_seed_check(trial), "status": trial["status"],
                      "epochs": [int(e["epoch"]) for e in epochs],
                      "metric": [e.get(column) for e in epochs], "val_loss": [e["val_loss"] for e in epochs],
                      "train_loss": [e["train_loss"] for e in epochs]})
    return {"metric": column.replace("_", " "), "lower_is_better": study.metric in LOWER_IS_BETTER, "trials": lines}


def trial_rows(study: report.StudyRecord) -> list[dict[str, Any]]:
    """The live trial table: status, diagnosis, the move and its reason, the value and what it did."""
    best, found = study.best, report.verdicts(study.trials)
    rows = []
    for trial in study.trials:
        rows.append({"number": trial["number"], "status": trial["status"], "value": trial["value"],
                     "best": best is not None and trial["number"] == best["number"],
                     "seed_check": is_seed_check(trial), "diagnosis": trial["diagnosis"],
                     "diagnosis_summary": trial["diagnosis_summary"] or "", "reason": trial["reason"],
                     "verdict": found.get(trial["number"], ""), "no_effect": trial.get("no_effect") or "",
                     "seconds": trial["seconds"], "run_id": trial["run_id"]})
    return rows


def study_state(study: report.StudyRecord) -> dict[str, Any]:
    """What the study page refreshes while the study runs."""
    return {"status": study_status(study.row), "trials": len(study.trials),
            "completed": len(study.completed), "stop_reason": study.row["stop_reason"] or ""}


def run_summaries(store: Workspace) -> list[dict[str, Any]]:
    """Every run, latest first, with the study it belongs to and its headline score."""
    study_of = store.run_studies()
    return [{"id": r.id, "created_at": r.created_at, "status": r.status, "task": r.task, "adapter": r.adapter,
             "n_train": r.n_train, "n_val": r.n_val, "seconds": r.seconds, "study": study_of.get(r.id),
             "score": headline(r.metrics), "model_kept": r.artifact is not None}
            for r in reversed(store.runs())]


def headline(metrics: dict[str, Any]) -> str:
    """A run's first recorded score, in words ("val accuracy 0.9123")."""
    for label, key in SCORES:
        if metrics.get(key) is not None:
            return f"{label} {metrics[key]:.4f}"
    return ""


def run_detail(store: Workspace, record: RunRecord) -> dict[str, Any]:
    """A run's page: its recipe, its metrics, its curves and the study it belongs to."""
    epochs = store.epochs(record.id)
    metric_columns = [key for _, key in SCORES if key != "val_loss" and any(e.get(key) is not None for e in epochs)]
    scores = [(label, record.metrics[key]) for label, key in SCORES if isinstance(record.metrics.get(key), float)]
    other = {k: v for k, v in record.metrics.items() if k not in {key for _, key in SCORES}}
    return {"record": record, "study": store.study_of(record.id), "scores": scores, "other_metrics": other,
            "recipe": read_knobs(record),
            "curves": {"epochs": [int(e["epoch"]) for e in epochs],
                       "train_loss": [e["train_loss"] for e in epochs], "val_loss": [e["val_loss"] for e in epochs],
                       "metrics": {key.replace("_", " "): [e.get(key) for e in epochs] for key in metric_columns}},
            "epochs": epochs}


def read_knobs(record: RunRecord) -> dict[str, Any]:
    """The run's recipe, less the knobs its kind of data does not read (LoRA's on a table, say)."""
    from tuneloop.tasks import TASKS

    kind = TASKS.get((record.data_options or {}).get("task", ""))
    return {k: v for k, v in record.recipe.items() if kind is None or k in kind.knobs}


def study_fingerprint(store: Workspace, study_id: str) -> str:
    """What changes whenever a study's page would: its row, its trials and their epoch counts (cheap to read,
    so a page polling an unchanged study is answered without reading and drawing it all)."""
    import hashlib
    import json

    row = next((r for r in store.studies() if r["id"] == study_id), None)
    trials = store.trials(study_id)
    epochs = store.epoch_counts(study_id)
    state = [row and (study_status(row), row["spent_seconds"], row["stop_reason"], row.get("choice")),
             [(t["number"], t["status"], t["value"], t["diagnosis"], t["run_id"]) for t in trials], epochs]
    return hashlib.sha256(json.dumps(state, default=str).encode()).hexdigest()[:20]


def registry_summary(store: Workspace) -> list[dict[str, Any]]:
    """Every registered name with its versions (latest first) and its production version."""
    registry = Registry(store)
    found = []
    for name in registry.names():
        versions = registry.versions(name)
        production = next((v for v in versions if v.stage == "production"), None)
        found.append({"name": name, "versions": list(reversed(versions)), "production": production,
                      "drift": (store.drift_checks(name) or [None])[0]})
    return found


def model_detail(store: Workspace, name: str) -> dict[str, Any]:
    """One registered name: its versions with lineage and gate decisions, its history and its drift checks.
    A candidate may be promoted (through the gate); an earlier production version may be rolled back to."""
    registry = Registry(store)
    versions = registry.versions(name)  # raises a clear error for an unknown name
    events = registry.events(name)
    production = next((v for v in versions if v.stage == "production"), None)
    was_production = {e["version"] for e in events if e["action"] in ("promote", "rollback")}
    rollback_to = [v for v in versions if production is not None and v.version != production.version
                   and v.version in was_production]
    return {"name": name, "versions": list(reversed(versions)), "production": production,
            "events": list(reversed(events)), "drift": store.drift_checks(name),
            "candidates": [v for v in versions if v.stage == "candidate"],
            "rollback_to": list(reversed(rollback_to))}
