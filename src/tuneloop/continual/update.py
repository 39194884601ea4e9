"""Updating a production model on new data without forgetting, then gating the update.

The new data is split three ways: a holdout the gate judges on (never trained or tuned on), validation data
the update's trials are scored on, and training data. The production version's kept holdout is split in two:
one half scores the trials, the other is the gate's old holdout. Each trial fine-tunes the production model
(its head grown where the new data has new classes) on the new training data plus a stratified replay of the
data it was trained on, pulled toward its weights by L2-SP; the update's policy moves the learning rate,
epochs, replay share and pull between trials. The best trial is registered as a candidate with its own
replay and holdout samples, and promoted if the gate passes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.config import Recipe
from tuneloop.continual.gate import DEFAULT_TOLERANCE, GateDecision
from tuneloop.continual.policy import UpdateKnobs, UpdateOutcome, best_outcome, first_knobs, next_knobs
from tuneloop.continual.samples import (
    HOLDOUT_SIZE,
    REPLAY_SIZE,
    Examples,
    bounded_sample,
    class_labels,
    concat,
    load_examples,
    save_examples,
    split_off,
)
from tuneloop.continual.scoring import example_scores, is_regressor, read_like
from tuneloop.continual.versions import GATE_NEW, GATE_OLD, gate_decision, version_run
from tuneloop.errors import ConfigError, DataError
from tuneloop.models.ensemble import lead_member
from tuneloop.pipeline import load_task, train_run
from tuneloop.run import Run
from tuneloop.store.registry import ModelVersion, Registry, parse_reference
from tuneloop.store.workspace import Workspace
from tuneloop.tasks import DataOptions
from tuneloop.tracking.mlflow_export import MlflowExporter, StudyTracker, open_exporter
from tuneloop.tracking.target import parse_track, track_problems
from tuneloop.training.loop import Callback
from tuneloop.tuning.study import Budget, new_study_id

HOLDOUT_FRACTION = 0.25  # of the new data, kept for the gate alone
VALIDATION_FRACTION = 0.2  # of the rest, scoring the update's trials


@dataclass(frozen=True)
class UpdateTrial:
    number: int
    knobs: UpdateKnobs
    reason: str
    run_id: str
    outcome: UpdateOutcome
    seconds: float


@dataclass
class AdaptResult:
    """The update: its version (a candidate, or production where promoted), the gate's decision, the
    trials that led to it, and the production version it started from."""

    version: ModelVersion
    parent: ModelVersion
    promoted: bool
    decision: GateDecision
    trials: list[UpdateTrial] = field(default_factory=list)
    study_id: str = ""
    new_classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version.ref, "parent": self.parent.ref, "promoted": self.promoted,
                "stage": "production" if self.promoted else self.version.stage, "study": self.study_id,
                "new_classes": self.new_classes, "gate": self.decision.to_dict(),
                "trials": [{"number": t.number, "run": t.run_id, "knobs": t.knobs.__dict__, "reason": t.reason,
                            "new_gain": t.outcome.new_gain, "old_drop": t.outcome.old_drop,
                            "seconds": round(t.seconds, 1)} for t in self.trials]}


@dataclass(frozen=True)
class UpdateData:
    """The new data and the kept old data, split for an update: what trains, what scores the trials, and
    what only the gate sees."""

    new_rest: Examples  # the new data less the gate's holdout: training and validation, kept for replay later
    new_train: Examples
    new_val: Examples
    gate_new: Examples
    old_val: Examples
    gate_old: Examples
    old_holdout: Examples
    replay: Examples

    @classmethod
    def split(cls, new: Examples, replay: Examples, old_holdout: Examples, holdout_fraction: float, seed: int,
              classification: bool) -> UpdateData:
        new_rest, gate_new = split_off(new, holdout_fraction, seed, classification)
        new_train, new_val = split_off(new_rest, VALIDATION_FRACTION, seed + 1, classification)
        old_val, gate_old = split_off(old_holdout, 0.5, seed + 2, classification)
        if min(len(new_train), len(new_val), len(gate_new)) == 0:
            raise DataError(f"{new.source}: {len(new)} examples are too few to train, validate and hold out for "
                            "the gate; give more new data.")
        return cls(new_rest, new_train, new_val, gate_new, old_val, gate_old, old_holdout, replay)


def adapt(name: str, data: Any, *, workspace: str | os.PathLike | None = None, budget: str = "4trials",
          tolerance: float = DEFAULT_TOLERANCE, promote: bool = True, force: bool = False,
          reason: str | None = None, text_col: str | None = None, label_col: str | None = None,
          image_col: str | None = None, learning_rate: float | None = None, epochs: int | None = None,
          replay_ratio: float | None = None, l2sp: float | None = None, holdout_fraction: float = HOLDOUT_FRACTION,
          replay_size: int = REPLAY_SIZE, holdout_size: int = HOLDOUT_SIZE, seed: int = 0,
          callbacks: Sequence[Callback] = (), track: str | None = None) -> AdaptResult:
    """Fine-tune ``name``'s production version on labelled new ``data`` without forgetting, register the
    result as a candidate, and promote it where the gate passes (``promote``), or anyway with ``force`` and
    a ``reason``. ``budget`` bounds the update's trials ('4trials', '10m'); knobs given here fix the first
    trial's values (the policy may still move them on forgetting). ``track`` ("mlflow", or "mlflow:URI")
    records the update's study in MLflow as its trials run, and the gate's decision on the study's run."""
    problems = _option_problems(tolerance, holdout_fraction, replay_ratio, force, reason) + track_problems(track)
    try:
        limits = Budget.parse(budget)
    except ConfigError as error:
        problems += error.problems
    if problems:
        raise ConfigError(problems)
    target = parse_track(track)
    exporter = None if target is None else open_exporter(target)  # before any compute: a missing package stops it
    reference_name, number = parse_reference(name)
    with Workspace.open(workspace) as store:
        registry = Registry(store)
        parent = registry.get(reference_name, number)
        production = version_run(store, parent)
        options = DataOptions.from_dict(parent.lineage.get("data_options"))
        new = read_like(production, data, options, text_col=text_col, label_col=label_col, image_col=image_col)
        classification = not is_regressor(production)
        parts = UpdateData.split(new, load_examples(parent.folder, "replay"), load_examples(parent.folder, "holdout"),
                                 holdout_fraction, seed, classification)
        new_classes = sorted(set(class_labels(new) or []) - set(production.classes)) if classification else []

        first = first_knobs(learning_rate or production.recipe.learning_rate, epochs or production.recipe.epochs)
        first = UpdateKnobs(first.learning_rate, first.epochs, first.replay_ratio if replay_ratio is None
                            else replay_ratio, first.l2sp if l2sp is None else l2sp)
        study_id, trials, runs, allowed = _search(store, parent, production, options, parts, first, limits,
                                                  tolerance, seed, callbacks, exporter)
        best = best_outcome([t.outcome for t in trials], allowed)
        chosen = runs[best]
        decision = gate_decision(chosen, production, parts.gate_new, parts.gate_old, tolerance)
        version = _register_update(store, registry, parent, chosen, trials[best], study_id, new, new_classes,
                                   parts, options, replay_size, holdout_size, seed, classification)
        registry.record_gate(parent.name, version.version, decision.to_dict())
        promoted = promote and (decision.promote or force)
        if promoted:
            version = registry.promote(parent.name, version.version, reason=reason,
                                       forced=force and not decision.promote, gate=decision.to_dict(),
                                       replacing=parent.version)
        else:
            version = registry.get(parent.name, version.version)
        if exporter is not None:  # the study's run with the gate's decision, and the trials' models
            StudyTracker(exporter, store, study_id).finish()
    return AdaptResult(version, parent, promoted, decision, trials, study_id, new_classes)


def _search(store: Workspace, parent: ModelVersion, production: Run, options: DataOptions, parts: UpdateData,
            knobs: UpdateKnobs, limits: Budget, tolerance: float, seed: int, callbacks: Sequence[Callback],
            exporter: MlflowExporter | None = None) -> tuple[str, list[UpdateTrial], list[Run], float]:
    """The update's trials, each scored against production on new and old validation data, the policy
    choosing the next knobs, until the budget is spent or the policy stops; recorded as a study, and with an
    ``exporter``, each trial exported as it starts and ends, as a tuning study's are. Also returns the
    tolerance in score units."""
    classification = not is_regressor(production)
    baseline_new = float(np.mean(example_scores(production, parts.new_val)))
    baseline_old = float(np.mean(example_scores(production, parts.old_val)))
    # The policy reads the tolerance in score units, as the gate does: accuracy points, or for a regressor
    # a share of production's mean absolute error.
    allowed = tolerance if classification else tolerance * abs(baseline_old)
    metric = production.recipe.metric  # made concrete for its objective when the run was trained
    if metric == "auto":
        metric = production.recipe.for_objective("classification" if classification else "regression").metric
    study_id = new_study_id()
    store.create_study(study_id, "adapt", metric, {"name": parent.name, "parent": parent.version,
                                                   "data": parts.new_rest.source, "budget": str(limits),
                                                   "tolerance": tolerance})
    tracker = None if exporter is None else StudyTracker(exporter, store, study_id)
    why = f"start from {parent.ref}'s own recipe: {knobs.describe()}"
    trials: list[UpdateTrial] = []
    runs: list[Run] = []
    started = time.perf_counter()
    while True:
        number = len(trials) + 1
        recipe = production.recipe.replace(learning_rate=knobs.learning_rate, epochs=knobs.epochs,
                                           l2sp=knobs.l2sp, seed=seed)
        store.start_trial(study_id, number, number, {**recipe.to_dict(), "replay_ratio": knobs.replay_ratio}, why)
        if tracker is not None:
            tracker.trial_changed(number)
        trial_started = time.perf_counter()
        run, best_was_last = _train_update(store, production, options, parts, recipe, knobs.replay_ratio, callbacks)
        outcome = UpdateOutcome(knobs, float(np.mean(example_scores(run, parts.new_val))) - baseline_new,
                                baseline_old - float(np.mean(example_scores(run, parts.old_val))), best_was_last)
        seconds = time.perf_counter() - trial_started
        trials.append(UpdateTrial(number, knobs, why, run.id, outcome, seconds))
        runs.append(run)
        store.end_trial(study_id, number, status="completed", run_id=run.id, value=run.metrics[f"val_{metric}"],
                        diagnosis="forgetting" if outcome.forgot(allowed) else "kept",
                        summary=f"new data {outcome.new_gain:+.4f}, old data {-outcome.old_drop:+.4f}",
                        evidence={"new_gain": outcome.new_gain, "old_drop": outcome.old_drop, **knobs.__dict__},
                        seconds=seconds)
        if tracker is not None:
            tracker.trial_changed(number)
        spent = time.perf_counter() - started
        if (limits.trials and len(trials) >= limits.trials) or (limits.seconds and spent >= limits.seconds):
            store.finish_study(study_id, "budget spent")
            return study_id, trials, runs, allowed
        proposal = next_knobs([t.outcome for t in trials], allowed)
        if proposal is None:
            store.finish_study(study_id, "converged")
            return study_id, trials, runs, allowed
        knobs, why = proposal


def _register_update(store: Workspace, registry: Registry, parent: ModelVersion, chosen: Run, trial: UpdateTrial,
                     study_id: str, new: Examples, new_classes: list[str], parts: UpdateData, options: DataOptions,
                     replay_size: int, holdout_size: int, seed: int, classification: bool) -> ModelVersion:
    """The chosen trial's model as a candidate version, with its lineage and its own kept samples: replay of
    the old sample and the new training data, a holdout joining the old and new ones, and the gate's two."""
    record = store.resolve(chosen.id)
    lineage = {"run": chosen.id, "kind": record.task, "backbone": record.backbone, "adapted_from": parent.ref,
               "study": study_id, "train_source": f"{new.source} + replay of {parent.ref}",
               "train_fingerprint": record.train_fingerprint, "val_fingerprint": record.val_fingerprint,
               "new_data": new.source, "new_fingerprint": new.fingerprint(), "new_classes": new_classes,
               "knobs": trial.knobs.__dict__, "recipe": chosen.recipe.to_dict(), "data_options": options.to_dict()}

    def fill(folder: Path) -> None:
        save_examples(bounded_sample(concat(parts.replay, parts.new_rest), replay_size, seed, classification),
                      folder, "replay")
        save_examples(bounded_sample(concat(parts.old_holdout, parts.gate_new), holdout_size, seed, classification),
                      folder, "holdout")
        save_examples(parts.gate_new, folder, GATE_NEW)
        save_examples(parts.gate_old, folder, GATE_OLD)

    return registry.register(parent.name, run_id=chosen.id, lineage=lineage, metrics=chosen.metrics,
                             parent=parent.version, fill=fill)


def _train_update(store: Workspace, production: Run, options: DataOptions, parts: UpdateData, recipe: Recipe,
                  replay_ratio: float, callbacks: Sequence[Callback]) -> tuple[Run, bool]:
    """One trial: the production model (an ensemble's lead member) fine-tuned by ``recipe`` on the new training
    data and its share of replay, with the best epoch chosen on new and old validation data together."""
    classification = not is_regressor(production)
    wanted = 0 if replay_ratio <= 0 else round(len(parts.new_train) * replay_ratio / (1 - replay_ratio))
    train = parts.new_train
    if wanted:
        train = concat(train, bounded_sample(parts.replay, min(wanted, len(parts.replay)), recipe.seed,
                                             classification))
    read_as = DataOptions(task=options.task, val_fraction=VALIDATION_FRACTION, seed=recipe.seed)
    task = load_task(train, concat(parts.new_val, parts.old_val), read_as, model=str(lead_member(production.path)),
                     keep_classes=classification)
    task.cache_in(store.root / "cache")  # the frozen part's outputs, shared across trials and later updates
    run, result = train_run(store, task, recipe, callbacks)
    return run, result.best_epoch == len(result.history)


def _option_problems(tolerance: float, holdout_fraction: float, replay_ratio: float | None, force: bool,
                     reason: str | None) -> list[str]:
    problems = []
    if not (isinstance(tolerance, (int, float)) and 0 <= tolerance <= 1):
        problems.append(f"The 'tolerance' parameter must be a float in the range [0, 1]. Got {tolerance!r} instead.")
    if not (isinstance(holdout_fraction, (int, float)) and 0 < holdout_fraction < 1):
        problems.append(f"The 'holdout_fraction' parameter must be a float in the range (0, 1). "
                        f"Got {holdout_fraction!r} instead.")
    if replay_ratio is not None and not (isinstance(replay_ratio, (int, float)) and 0 <= replay_ratio < 1):
        problems.append(f"The 'replay_ratio' parameter must be a float in the range [0, 1). Got {replay_ratio!r} "
                        "instead.")
    if force and not (reason and reason.strip()):
        problems.append("--force needs --reason TEXT: the reason is recorded with the version.")
    return problems
