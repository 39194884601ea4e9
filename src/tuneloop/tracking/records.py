"""What a fit, a study's trial and a study become in an experiment tracker, read off the workspace's records.

Pure: plain values in (run records, epoch rows, trial rows, a study row), a ``TrackedRun`` out. Every value is
derived from what the workspace stored, timestamps included, so exporting the same records twice gives the
same run, and a tracker that drops exact duplicates has nothing new to store.

- parameters: the recipe (a trial's own, with its extra knobs such as an update's replay ratio), or a study's
  options;
- metrics: each epoch's row (train loss, val loss, val accuracy ... at ``step=epoch``), the run's final
  scores as ``final/<name>`` (its best epoch's, or a refit's estimate), a trial's value as ``objective``
  (higher is better: minus a loss or an error) and the numbers of its diagnosis as ``evidence/<name>``;
- tags: what finds the run again (``tuneloop.run_id``, ``tuneloop.study_id`` with ``tuneloop.trial``), the
  diagnosis, the move and its reason, the data the run read, and a study's stop reason and final decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tuneloop.store.workspace import EPOCH_COLUMNS, RunRecord
from tuneloop.tuning.seeds import best_trial, kind_of

# A tuneloop status as a tracker's run status. A pruned trial (its pruner stopped it) or a seed-check re-run the
# budget cut short ended as the study asked: finished, with its own status in a tag.
RUN_STATUS = {"running": "RUNNING", "completed": "FINISHED", "pruned": "FINISHED", "stopped": "FINISHED",
              "finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # as the workspace writes created_at and finished_at
EPOCH_KEYS = {name: "epoch_seconds" if name == "seconds" else name for name in EPOCH_COLUMNS}


@dataclass(frozen=True)
class TrackedMetric:
    key: str
    value: float
    step: int
    timestamp_ms: int


@dataclass
class TrackedRun:
    """One run in the tracker: the tags that find it again (a second export reuses the run they find), its
    name, parameters, metrics and tags (the identity's among them), its status and times (milliseconds since
    the epoch; None: the tracker's clock), and its model folder where that is still on disk."""

    identity: dict[str, str]
    name: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[TrackedMetric] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "RUNNING"
    start_ms: int | None = None
    end_ms: int | None = None
    artifact: Path | None = None
    note: str = ""  # the run's description: why it ran


@dataclass(frozen=True)
class UpdateDecision:
    """How an update (``adapt``) ended: the version it registered, that version's stage now, the promotion
    gate's decision (as ``GateDecision.to_dict`` stores it), and whether it was promoted (by force or not)."""

    version: str
    run_id: str
    stage: str
    gate: dict[str, Any] | None
    promoted: bool
    forced: bool = False


def milliseconds(text: str | None) -> int | None:
    """A workspace time (``2026-01-31T12:00:00+0100``) in milliseconds since the epoch; None for none."""
    if not text:
        return None
    try:
        return int(datetime.strptime(text, TIME_FORMAT).timestamp() * 1000)
    except ValueError:
        return None


def fit_run(record: RunRecord, epochs: list[dict[str, Any]]) -> TrackedRun:
    """A run of its own (``fit``): its recipe, curves, final scores and data; found again by its run id."""
    identity = {"tuneloop.run_id": record.id, "tuneloop.type": "run"}
    tracked = TrackedRun(identity, record.id, params=_params(record.recipe), tags={**identity, **data_tags(record)},
                         status=RUN_STATUS.get(record.status, "RUNNING"))
    _add_run(tracked, record, epochs)
    tracked.note = f"tuneloop fit {record.id}: {record.backbone} on {record.train_source} ({record.status})"
    return tracked


def trial_run(study_id: str, row: dict[str, Any], record: RunRecord | None, epochs: list[dict[str, Any]],
              parent_recipe: dict[str, Any] | None = None, study_created: str | None = None) -> TrackedRun:
    """A study's trial (a stored trial row, with its run's record and epochs where it has a run; a
    cross-validation or a trial that failed before its first epoch has none): its recipe, curves, scores,
    diagnosis, and the move from ``parent_recipe`` (the recipe of the trial it changed) with its reason."""
    identity = {"tuneloop.study_id": study_id, "tuneloop.trial": str(row["number"])}
    # The trial's recipe as the study recorded it when the trial started (its extra knobs too), so that a trial
    # exported as it starts and again as it ends has the same parameters; the run's record adds what it lacks.
    recipe = {**(record.recipe if record is not None else {}), **row["recipe"]}
    tags = {**identity, "tuneloop.type": "trial", "tuneloop.status": row["status"], "tuneloop.kind": kind_of(row),
            "tuneloop.reason": row["reason"]}
    optional = {"tuneloop.run_id": row.get("run_id"), "tuneloop.diagnosis": row.get("diagnosis"),
                "tuneloop.diagnosis_summary": row.get("diagnosis_summary"), "tuneloop.no_effect": row.get("no_effect"),
                "tuneloop.parent_trial": row.get("parent")}
    tags |= {key: str(value) for key, value in optional.items() if value not in (None, "")}
    if parent_recipe is not None and (changed := move(parent_recipe, row["recipe"])):
        tags["tuneloop.move"] = changed
    tracked = TrackedRun(identity, f"{study_id} trial {row['number']}", params=_params(recipe), tags=tags,
                         status=RUN_STATUS.get(row["status"], "RUNNING"), note=row["reason"])
    start = milliseconds(study_created)
    if record is not None:
        tracked.tags |= data_tags(record)
        _add_run(tracked, record, epochs)
        start = tracked.start_ms
    at = start or 0
    if row.get("value") is not None and _is_number(row["value"]):
        tracked.metrics.append(TrackedMetric("objective", float(row["value"]), 0, at))
    tracked.metrics += [TrackedMetric(f"evidence/{key}", float(value), 0, at)
                        for key, value in (row.get("evidence") or {}).items() if _is_number(value)]
    if tracked.start_ms is None and start is not None:
        tracked.start_ms = start
    if tracked.end_ms is None and tracked.start_ms is not None and row.get("seconds") and row["status"] != "running":
        tracked.end_ms = tracked.start_ms + round(1000 * row["seconds"])
    return tracked


def study_run(study: dict[str, Any], trials: list[dict[str, Any]], update: UpdateDecision | None = None
              ) -> TrackedRun:
    """A study, the parent of its trials' runs: its options as parameters, its time spent, why it stopped,
    its best trial, how the final model was chosen; for an update (``adapt``), the promotion gate's decision."""
    identity = {"tuneloop.study_id": study["id"], "tuneloop.type": "study"}
    options = {key: value for key, value in study["options"].items()
               if value is not None and not isinstance(value, (dict, list))}
    tags = {**identity, "tuneloop.strategy": study["strategy"], "tuneloop.metric": study["metric"],
            "tuneloop.status": study["status"]}
    optional = {"tuneloop.stop_reason": study.get("stop_reason"), "tuneloop.decision": study.get("choice")}
    tags |= {key: str(value) for key, value in optional.items() if value}
    start = milliseconds(study["created_at"])
    spent = float(study.get("spent_seconds") or 0.0)
    # The study's numbers change as its trials end: each is logged at the count of trials ended so far, a point
    # per count (a curve of the best value as the study goes on), rather than one value a re-export cannot change.
    ended = sum(1 for trial in trials if trial["status"] != "running")
    at = (start or 0) + round(1000 * spent)
    metrics = [TrackedMetric("spent_seconds", spent, ended, at), TrackedMetric("trials_ended", ended, ended, at)]
    # An update's best trial is the one it registered; any other study's, the one its driver hands back.
    best = best_trial(trials) if update is None else next((t for t in trials if t.get("run_id") == update.run_id), None)
    if best is not None:
        tags["tuneloop.best_trial"] = str(best["number"])
        if best.get("run_id"):
            tags["tuneloop.best_run_id"] = best["run_id"]
        if _is_number(best.get("value")):
            metrics.append(TrackedMetric("best_objective", float(best["value"]), ended, at))
    if update is not None:
        tags |= update_tags(update)
        metrics += [TrackedMetric(key, value, ended, at) for key, value in gate_numbers(update.gate).items()]
    status = RUN_STATUS.get(study["status"], "RUNNING")
    end = at if start is not None and status != "RUNNING" else None
    ended = f": {study['stop_reason']}" if study.get("stop_reason") else ""
    note = f"tuneloop study {study['id']} ({study['strategy']}), {len(trials)} trials{ended}"
    return TrackedRun(identity, study["id"], params=_params(options), metrics=metrics, tags=tags, status=status,
                      start_ms=start, end_ms=end, note=note + (f". {study['choice']}" if study.get("choice") else ""))


def update_tags(update: UpdateDecision) -> dict[str, str]:
    """The update's decision as tags: promoted or not (by force or not), the version and its stage now, and
    each check of the gate with its numbers in words."""
    decision = "promoted by force" if update.promoted and update.forced else (
        "promoted" if update.promoted else "not promoted")
    tags = {"tuneloop.decision": f"{decision}: {update.version}", "tuneloop.version": update.version,
            "tuneloop.stage": update.stage}
    if update.gate:
        tags["tuneloop.gate"] = "passed" if update.gate.get("promote") else "refused"
        for check in update.gate.get("checks", []):
            tags[f"tuneloop.gate.{_key(check['name'])}"] = (f"{'passed' if check['passed'] else 'failed'}: "
                                                           f"{check['summary']}")
        if update.gate.get("caveat"):
            tags["tuneloop.gate.caveat"] = update.gate["caveat"]
    return tags


def gate_numbers(gate: dict[str, Any] | None) -> dict[str, float]:
    """The gate's numbers (each check's means, difference and interval) as metrics ``gate/<check>/<name>``."""
    return {f"gate/{_key(check['name'])}/{name}": float(value) for check in (gate or {}).get("checks", [])
            for name, value in check.get("numbers", {}).items() if _is_number(value)}


def move(before: dict[str, Any], after: dict[str, Any]) -> str:
    """What a trial changed in the recipe of the trial it started from: "weight_decay 0.01 -> 0.05, ..."."""
    return ", ".join(f"{knob} {before[knob]} -> {value}" for knob, value in after.items()
                     if knob in before and before[knob] != value)


def data_tags(record: RunRecord) -> dict[str, str]:
    """What a run read: its kind of data, network, data sources, sizes and fingerprints; where it has no model
    any more (or never had one), why."""
    tags = {"tuneloop.task": record.task, "tuneloop.adapter": record.adapter, "tuneloop.backbone": record.backbone,
            "tuneloop.train_source": record.train_source, "tuneloop.val_source": record.val_source,
            "tuneloop.n_train": str(record.n_train), "tuneloop.n_val": str(record.n_val),
            "tuneloop.train_fingerprint": record.train_fingerprint,
            "tuneloop.val_fingerprint": record.val_fingerprint}
    if record.note:
        tags["tuneloop.model_note"] = record.note
    return {key: value for key, value in tags.items() if value}


def epoch_metrics(epochs: list[dict[str, Any]], start_ms: int) -> list[TrackedMetric]:
    """Each epoch's recorded values at ``step=epoch``, stamped at the epoch's end (the run's start plus the
    epochs' seconds so far: derived, not read off a clock, so a second export stamps them alike)."""
    metrics, elapsed = [], 0.0
    for row in epochs:
        elapsed += float(row.get("seconds") or 0.0)
        at = start_ms + round(1000 * elapsed)
        metrics += [TrackedMetric(key, float(row[name]), int(row["epoch"]), at) for name, key in EPOCH_KEYS.items()
                    if _is_number(row.get(name))]
    return metrics


def final_metrics(metrics: dict[str, Any], at_ms: int) -> list[TrackedMetric]:
    """A run's recorded scores (its best epoch's, or a refit's estimate) and counts, as ``final/<name>``: kept
    apart from the per-epoch curves, whose last point is the last epoch, not the chosen one."""
    return [TrackedMetric(f"final/{key}", float(value), 0, at_ms) for key, value in metrics.items()
            if _is_number(value)]


def _add_run(tracked: TrackedRun, record: RunRecord, epochs: list[dict[str, Any]]) -> None:
    """A run record's times, curves, final scores and model folder (where it is still on disk)."""
    tracked.start_ms = milliseconds(record.created_at)
    tracked.end_ms = milliseconds(record.finished_at)
    start = tracked.start_ms or 0
    tracked.metrics += epoch_metrics(epochs, start)
    tracked.metrics += final_metrics(record.metrics, tracked.end_ms or start)
    if record.artifact is not None and record.artifact.is_dir():
        tracked.artifact = record.artifact


def _params(values: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in values.items()}


def _key(name: str) -> str:
    """A check's name ("new data gain") as part of a tag or metric key ("new_data_gain")."""
    return "_".join(name.split())


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool: ``stopped_early`` is a flag, not a measurement)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
