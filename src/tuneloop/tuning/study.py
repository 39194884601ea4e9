"""The study driver: propose a recipe, train it, diagnose it, record it, until the budget, the target or
convergence ends the study. Every trial is a run in the workspace, so the best one is a model that
``evaluate`` and ``predict`` take like any other.

    while not done:
        proposal = strategy.propose(...)     # guided: the policy applied to the best trial's diagnosis
        run = train_run(proposal.recipe)     # per-epoch validation, pruning, the budget's deadline
        diagnosis = diagnose(run.history)    # recorded before the next proposal
"""

from __future__ import annotations

import math
import re
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from tuneloop.config import Recipe
from tuneloop.errors import ConfigError, TuneloopError
from tuneloop.store.workspace import Workspace
from tuneloop.training.loop import Callback, EpochRecord, StopTraining
from tuneloop.tuning.diagnose import Diagnosis, diagnose
from tuneloop.tuning.strategies import PRUNERS, STRATEGIES, Proposal, Strategy, TrialOutcome, make_pruner

CONVERGENCE_PATIENCE = 4  # proposals without a gain beyond noise before the study stops


@dataclass(frozen=True)
class Budget:
    seconds: float | None = None
    trials: int | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        """'15m', '90s', '1.5h' or '30trials'."""
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|trials?)\s*", text or "")
        if not match:
            raise ConfigError([f"The 'budget' parameter must be a duration like 15m, 90s, 1h or a trial count "
                               f"like 30trials. Got {text!r} instead."])
        amount, unit = float(match.group(1)), match.group(2)
        if amount <= 0:
            raise ConfigError([f"The 'budget' parameter must be positive. Got {text!r} instead."])
        if unit.startswith("trial"):
            return cls(trials=int(amount))
        return cls(seconds=amount * {"s": 1, "m": 60, "h": 3600}[unit])

    def __str__(self) -> str:
        return f"{self.trials} trials" if self.trials else f"{self.seconds / 60:g} min"


@dataclass
class TrialRecord:
    number: int
    recipe: Recipe
    reason: str
    status: str = "running"
    run_id: str | None = None
    value: float | None = None
    diagnosis: Diagnosis | None = None
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    def outcome(self) -> TrialOutcome:
        return TrialOutcome(self.recipe, self.status, self.value, self.diagnosis)


class StudyCallback:
    """Hooks for a live display of the study."""

    def on_trial_start(self, number: int, recipe: Recipe, reason: str) -> None: ...

    def on_trial_end(self, trial: TrialRecord, best: TrialRecord | None) -> None: ...

    def training_callbacks(self) -> list[Callback]:
        return []


class _ReportToOptuna(Callback):
    """Feeds the pruner per-epoch values, and ends training when pruned or when the budget is spent."""

    def __init__(self, trial: optuna.trial.Trial, metric: str, deadline: float | None):
        self.trial, self.metric, self.deadline = trial, metric, deadline

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None:
        value = record.metric(self.metric)
        self.trial.report(-value if self.metric == "loss" else value, record.epoch)
        if self.trial.should_prune():
            raise StopTraining("pruned")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise StopTraining("budget")


def objective_value(metrics: dict[str, Any], metric: str) -> float:
    """Higher is better: the validation metric, or minus the validation loss."""
    return -metrics["val_loss"] if metric == "loss" else metrics[f"val_{metric}"]


@dataclass
class StudyResult:
    id: str
    trials: list[TrialRecord]
    best: TrialRecord | None
    stop_reason: str
    spent_seconds: float


def new_study_id() -> str:
    return "study-" + time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def check_study_options(strategy: str, prune: str, target: float | None) -> list[str]:
    problems = []
    if strategy not in STRATEGIES:
        problems.append(f"The 'strategy' parameter must be one of {', '.join(STRATEGIES)}. Got {strategy!r} instead.")
    if prune not in PRUNERS:
        problems.append(f"The 'prune' parameter must be one of {', '.join(PRUNERS)}. Got {prune!r} instead.")
    if target is not None and not (isinstance(target, (int, float)) and math.isfinite(target)):
        problems.append(f"The 'target' parameter must be a number. Got {target!r} instead.")
    return problems


def run_study(store: Workspace, study_id: str, task: Any, base: Recipe, strategy: Strategy, budget: Budget, *,
              target: float | None, prune: str, train_trial, callbacks: Sequence[StudyCallback] = (),
              spent_before: float = 0.0) -> StudyResult:
    """Drive a study to its end. ``train_trial(recipe, training_callbacks, checkpoint_name)`` trains one run,
    saving each epoch under ``checkpoint_name`` and continuing from there if a saved epoch exists.

    Resuming is running this again on the same ``study_id``: finished trials are read back, interrupted
    ones re-run first, and the time budget counts what was spent before.
    """
    storage = optuna.storages.RDBStorage(f"sqlite:///{store.root / 'tuneloop.db'}",
                                         engine_kwargs={"connect_args": {"timeout": 30}})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_id, storage=storage, load_if_exists=True, direction="maximize",
                                sampler=strategy.sampler(base.seed), pruner=make_pruner(prune))
    _close_stale_optuna_trials(study)
    trials, retries = _read_back(store, study_id)
    metric = base.metric
    started = time.monotonic() - spent_before
    deadline = started + budget.seconds if budget.seconds else None
    stop_reason = ""
    since_gain = 0
    while True:
        best = _best(trials)
        stop_reason = _stop_reason(trials, best, budget, target, deadline, since_gain)
        if stop_reason:
            break
        retry, retry_number = retries.pop(0) if retries else (None, None)
        finished = [t.outcome() for t in trials if t.status != "interrupted"]
        proposal: Proposal | None = strategy.propose(study, base, finished, retry)
        if proposal is None:
            stop_reason = "the strategy has nothing left to try"
            break
        record = TrialRecord(len(trials), proposal.recipe, proposal.reason)
        store.start_trial(study_id, record.number, proposal.trial.number, proposal.recipe.to_dict(), proposal.reason)
        for callback in callbacks:
            callback.on_trial_start(record.number, proposal.recipe, proposal.reason)
        trial_started = time.monotonic()
        reporter = _ReportToOptuna(proposal.trial, metric, deadline)
        training_callbacks = [c for cb in callbacks for c in cb.training_callbacks()] + [reporter]
        # An interrupted trial's re-run continues from the epochs its first attempt saved.
        checkpoint_name = f"trial-{retry_number if retry_number is not None else record.number}"
        try:
            run, result = train_trial(proposal.recipe, training_callbacks, checkpoint_name)
        except TuneloopError as exc:  # e.g. diverged in the first epoch: a finding, not a crash of the study
            record.status = "failed"
            record.diagnosis = _failed_diagnosis(str(exc))
            study.tell(proposal.trial, state=optuna.trial.TrialState.FAIL)
        else:
            record.run_id, record.history = run.id, run.history
            record.value = objective_value(run.metrics, metric)
            record.status = "pruned" if result.stopped_by == "pruned" else "completed"
            record.diagnosis = diagnose(result.history, diverged=result.diverged, n_val=len(task.val),
                                        num_classes=len(task.classes), metric=metric)
            if record.status == "pruned":
                study.tell(proposal.trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(proposal.trial, record.value)
        record.seconds = time.monotonic() - trial_started
        _clear_checkpoint(store, study_id, checkpoint_name)
        store.end_trial(study_id, record.number, status=record.status, run_id=record.run_id, value=record.value,
                        diagnosis=record.diagnosis.label if record.diagnosis else None,
                        summary=record.diagnosis.summary if record.diagnosis else None,
                        evidence=record.diagnosis.evidence if record.diagnosis else None, seconds=record.seconds)
        store.add_spent(study_id, record.seconds)
        trials.append(record)
        new_best = _best(trials)
        since_gain = 0 if _gained(best, new_best) else since_gain + 1
        for callback in callbacks:
            callback.on_trial_end(record, new_best)
    store.finish_study(study_id, stop_reason)
    spent = time.monotonic() - started
    return StudyResult(study_id, trials, _best(trials), stop_reason, spent)


def _best(trials: list[TrialRecord]) -> TrialRecord | None:
    scored = [t for t in trials if t.status == "completed" and t.value is not None]
    return max(scored, key=lambda t: t.value) if scored else None


def _noise(trial: TrialRecord) -> float:
    """How much a better trial must beat this one by to count: the half-width of its accuracy interval."""
    return float(trial.diagnosis.evidence.get("ci_half_width", 0.0)) if trial.diagnosis else 0.0


def _gained(old: TrialRecord | None, new: TrialRecord | None) -> bool:
    if new is None:
        return False
    if old is None:
        return True
    return new is not old and new.value - old.value > _noise(old)


def _stop_reason(trials, best, budget: Budget, target, deadline, since_gain) -> str:
    counted = [t for t in trials if t.status != "interrupted"]
    if budget.trials is not None and len(counted) >= budget.trials:
        return f"the budget of {budget.trials} trials is spent"
    if deadline is not None and time.monotonic() >= deadline:
        return f"the time budget of {budget} is spent"
    if target is not None and best is not None and best.value >= target:
        return f"the target {target:g} is reached"
    if since_gain >= CONVERGENCE_PATIENCE:
        return f"no gain beyond validation noise in {since_gain} trials"
    return ""


def _failed_diagnosis(message: str) -> Diagnosis:
    return Diagnosis("diverged", {"epochs": 0}, f"{message}: diverged", message)


def _close_stale_optuna_trials(study: optuna.Study) -> None:
    """Trials left RUNNING by a killed process are failed in Optuna's records; tuneloop re-runs them."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


def _clear_checkpoint(store: Workspace, study_id: str, name: str) -> None:
    shutil.rmtree(store.root / "checkpoints" / study_id / name, ignore_errors=True)


def _read_back(store: Workspace, study_id: str) -> tuple[list[TrialRecord], list[tuple[Recipe, int]]]:
    """The study's finished trials, and the recipes and numbers of interrupted ones, to be re-run first."""
    trials, retries = [], []
    for row in store.trials(study_id):
        recipe = Recipe.from_dict(row["recipe"])
        record = TrialRecord(row["number"], recipe, row["reason"], row["status"], row["run_id"], row["value"],
                             seconds=row["seconds"] or 0.0)
        if row["diagnosis"]:
            record.diagnosis = Diagnosis(row["diagnosis"], row["evidence"], row["diagnosis_summary"] or "",
                                         row["diagnosis_summary"] or "")
        if row["run_id"]:
            record.history = store.epochs(row["run_id"])
        if row["status"] == "interrupted" and recipe_not_finished(recipe, store.trials(study_id)):
            retries.append((recipe, row["number"]))
        trials.append(record)
    return trials, retries


def recipe_not_finished(recipe: Recipe, rows: list[dict[str, Any]]) -> bool:
    return not any(r["status"] in ("completed", "pruned", "failed") and r["recipe"] == recipe.to_dict() for r in rows)
