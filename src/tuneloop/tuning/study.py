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

from tuneloop.config import LOWER_IS_BETTER, Recipe
from tuneloop.errors import ConfigError, TuneloopError
from tuneloop.store.workspace import Workspace
from tuneloop.training.loop import Callback, EpochRecord, StopTraining
from tuneloop.tuning.diagnose import Diagnosis, diagnose
from tuneloop.tuning.policy import recipe_key
from tuneloop.tuning.seeds import SEED_CHECK_PREFIX, SeedGroup, best_trial, seed_groups, seed_verdict
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
        if self.trials:
            return f"{self.trials} trials"
        return f"{self.seconds:g}s" if self.seconds < 60 else f"{self.seconds / 60:.3g} min"


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
    """Feeds the pruner per-epoch values, and ends training when pruned or when the budget is spent.

    Values are reported at the share of the trial's schedule done (percent), not at the epoch number: with
    a decaying learning rate, a 20-epoch trial at epoch 2 is still warming up where a 10-epoch one is well
    on its way, and comparing them there would prune every longer schedule the policy asks for.
    """

    def __init__(self, trial: optuna.trial.Trial, metric: str, deadline: float | None, prunable: bool = True,
                 epochs: int = 100):
        self.trial, self.metric, self.deadline, self.prunable = trial, metric, deadline, prunable
        self.epochs = epochs

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None:
        value = record.metric(self.metric)
        progress = round(100 * record.epoch / self.epochs)
        self.trial.report(-value if self.metric in LOWER_IS_BETTER else value, progress)
        if self.prunable and self.trial.should_prune():
            raise StopTraining("pruned")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise StopTraining("budget")


def objective_value(metrics: dict[str, Any], metric: str) -> float:
    """Higher is better: the validation metric, or minus it for a loss or an error (loss, MAE, RMSE)."""
    return -metrics[f"val_{metric}"] if metric in LOWER_IS_BETTER else metrics[f"val_{metric}"]


@dataclass
class StudyResult:
    id: str
    trials: list[TrialRecord]
    best: TrialRecord | None
    stop_reason: str
    spent_seconds: float
    seed_check: SeedCheck | None = None


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


SEED_CHECK_SEEDS = 2  # extra seeds for each of the top two recipes


@dataclass(frozen=True)
class SeedCheck:
    """The top recipes re-run with more seeds: per recipe the values over seeds, and the verdict."""

    groups: list[SeedGroup]
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict,
                "groups": [{"trial": g.original, "values": g.values, "mean": g.mean, "half_width": g.half_width}
                           for g in self.groups]}


def run_study(store: Workspace, study_id: str, task: Any, base: Recipe, strategy: Strategy, budget: Budget, *,
              target: float | None, prune: str, train_trial, callbacks: Sequence[StudyCallback] = (),
              spent_before: float = 0.0, seed_check: bool = True) -> StudyResult:
    """Drive a study to its end. ``train_trial(recipe, training_callbacks, checkpoint_name)`` trains one run,
    saving each epoch under ``checkpoint_name`` and continuing from there if a saved epoch exists.

    Resuming is running this again on the same ``study_id``: finished trials are read back, interrupted
    ones re-run first, and the time budget counts what was spent before.
    """
    driver = _StudyDriver(store, study_id, task, base, strategy, budget, target, prune, train_trial, callbacks,
                          spent_before)
    return driver.run(seed_check)


class _StudyDriver:
    def __init__(self, store, study_id, task, base, strategy, budget, target, prune, train_trial, callbacks,
                 spent_before):
        # metric "auto" made concrete: every trial is scored, reported and diagnosed by the same one
        self.store, self.study_id, self.task = store, study_id, task
        self.base = base.for_objective(task.objective.name)
        self.strategy, self.budget, self.target = strategy, budget, target
        self.train_trial, self.callbacks = train_trial, callbacks
        storage = optuna.storages.RDBStorage(f"sqlite:///{store.root / 'tuneloop.db'}",
                                             engine_kwargs={"connect_args": {"timeout": 30}})
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # A resumed study's sampler must not replay the draws of the first run: offset its seed by the
        # number of trials already asked (the stored trials themselves give TPE its history).
        try:
            asked = len(storage.get_all_trials(storage.get_study_id_from_name(study_id), deepcopy=False))
        except KeyError:
            asked = 0
        self.study = optuna.create_study(study_name=study_id, storage=storage, load_if_exists=True,
                                         direction="maximize", sampler=strategy.sampler(base.seed + asked),
                                         pruner=make_pruner(prune))
        _close_stale_optuna_trials(self.study)
        self.trials, self.retries = _read_back(store, study_id)
        self.started = time.monotonic() - spent_before
        self.deadline = self.started + budget.seconds if budget.seconds else None

    def run(self, seed_check: bool) -> StudyResult:
        stop_reason, since_gain = "", 0
        while True:
            best = _best(self.trials)
            stop_reason = _stop_reason(self._search_trials(), best, self.budget, self.target,
                                       self._search_deadline(seed_check), since_gain)
            if stop_reason:
                break
            retry, retry_number = self.retries.pop(0) if self.retries else (None, None)
            finished = [t.outcome() for t in self.trials if t.status != "interrupted"]
            proposal = self.strategy.propose(self.study, self.base, finished, retry)
            if proposal is None:
                stop_reason = "the strategy has nothing left to try"
                break
            # An interrupted trial's re-run continues from the epochs its first attempt saved.
            number = retry_number if retry_number is not None else len(self.trials)
            self._run_trial(proposal, f"trial-{number}")
            since_gain = 0 if _gained(best, _best(self.trials)) else since_gain + 1
        check = self._seed_check() if seed_check else None
        self.store.finish_study(self.study_id, stop_reason)
        best = _best_after_check(self.trials)
        return StudyResult(self.study_id, self.trials, best, stop_reason, time.monotonic() - self.started, check)

    def _search_trials(self) -> list[TrialRecord]:
        return [t for t in self.trials if not t.reason.startswith(SEED_CHECK_PREFIX)]

    def _search_deadline(self, seed_check: bool) -> float | None:
        """With a time budget, the search stops early enough to leave the seed check its share."""
        if self.deadline is None or not seed_check:
            return self.deadline
        done = [t.seconds for t in self._search_trials() if t.status == "completed"]
        reserve = 2 * SEED_CHECK_SEEDS * (sorted(done)[len(done) // 2] if done else 0.0)
        return self.deadline - reserve

    def _run_trial(self, proposal: Proposal, checkpoint_name: str) -> TrialRecord:
        record = TrialRecord(len(self.trials), proposal.recipe, proposal.reason)
        self.store.start_trial(self.study_id, record.number, proposal.trial.number, proposal.recipe.to_dict(),
                               proposal.reason)
        best_before = _best(self.trials)
        for callback in self.callbacks:
            callback.on_trial_start(record.number, proposal.recipe, proposal.reason)
        trial_started = time.monotonic()
        metric = self.base.metric
        # A seed-check re-run measures seed noise: cutting it short would hide exactly that.
        reporter = _ReportToOptuna(proposal.trial, metric, self.deadline,
                                   prunable=not proposal.reason.startswith(SEED_CHECK_PREFIX),
                                   epochs=proposal.recipe.epochs)
        training_callbacks = [c for cb in self.callbacks for c in cb.training_callbacks()] + [reporter]
        try:
            run, result = self.train_trial(proposal.recipe, training_callbacks, checkpoint_name)
        except TuneloopError as exc:  # e.g. diverged in the first epoch: a finding, not a crash of the study
            record.status = "failed"
            record.diagnosis = _failed_diagnosis(str(exc))
            self.study.tell(proposal.trial, state=optuna.trial.TrialState.FAIL)
        else:
            record.run_id, record.history = run.id, run.history
            record.value = objective_value(run.metrics, metric)
            record.status = "pruned" if result.stopped_by == "pruned" else "completed"
            record.diagnosis = diagnose(result.history, diverged=result.diverged, n_val=len(self.task.val),
                                        num_classes=len(self.task.classes), metric=metric,
                                        objective=self.task.objective.name)
            if record.status == "pruned":
                self.study.tell(proposal.trial, state=optuna.trial.TrialState.PRUNED)
            else:
                self.study.tell(proposal.trial, record.value)
        record.seconds = time.monotonic() - trial_started
        _clear_checkpoint(self.store, self.study_id, checkpoint_name)
        self.store.end_trial(self.study_id, record.number, status=record.status, run_id=record.run_id,
                             value=record.value, diagnosis=record.diagnosis.label if record.diagnosis else None,
                             summary=record.diagnosis.summary if record.diagnosis else None,
                             evidence=record.diagnosis.evidence if record.diagnosis else None,
                             seconds=record.seconds)
        self.store.add_spent(self.study_id, record.seconds)
        self.trials.append(record)
        for callback in self.callbacks:
            callback.on_trial_end(record, _best(self.trials) or best_before)
        return record

    def _seed_check(self) -> SeedCheck | None:
        """Re-run the top two recipes with more seeds, so that the winner's lead can be weighed against
        seed noise before it is called best."""
        top: list[TrialRecord] = []
        for trial in sorted((t for t in self._search_trials() if t.status == "completed"),
                            key=lambda t: t.value, reverse=True):
            if all(recipe_key(trial.recipe) != recipe_key(t.recipe) for t in top):
                top.append(trial)
            if len(top) == 2:
                break
        if not top:
            return None
        for trial in top:
            for offset in range(1, SEED_CHECK_SEEDS + 1):
                recipe = trial.recipe.replace(seed=(trial.recipe.seed + offset) % 2**32)
                if any(t.recipe == recipe and t.status == "completed" for t in self.trials):
                    continue
                optuna_trial = self.study.ask()
                optuna_trial.set_user_attr("tuneloop_recipe", recipe.to_dict())
                reason = f"{SEED_CHECK_PREFIX}: the recipe of trial {trial.number} with seed {recipe.seed}"
                name = f"seed-{trial.number}-{recipe.seed}"
                self._run_trial(Proposal(optuna_trial, recipe, reason), name)
        groups = seed_groups(_rows(self.trials))
        return SeedCheck(groups, seed_verdict(groups))


def _rows(trials: list[TrialRecord]) -> list[dict[str, Any]]:
    return [{"number": t.number, "reason": t.reason, "status": t.status, "value": t.value,
             "recipe": t.recipe.to_dict(), "run_id": t.run_id} for t in trials]


def _best_after_check(trials: list[TrialRecord]) -> TrialRecord | None:
    """The best run of the recipe with the best mean over seeds; without a seed check, the best trial."""
    row = best_trial(_rows(trials))
    return next(t for t in trials if t.number == row["number"]) if row else None


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
    rows = store.trials(study_id)
    for row in rows:
        recipe = Recipe.from_dict(row["recipe"])
        record = TrialRecord(row["number"], recipe, row["reason"], row["status"], row["run_id"], row["value"],
                             seconds=row["seconds"] or 0.0)
        if row["diagnosis"]:
            record.diagnosis = Diagnosis(row["diagnosis"], row["evidence"], row["diagnosis_summary"] or "",
                                         row["diagnosis_summary"] or "")
        if row["run_id"]:
            record.history = store.epochs(row["run_id"])
        if (row["status"] == "interrupted" and not row["reason"].startswith(SEED_CHECK_PREFIX)
                and recipe_not_finished(recipe, rows)):
            retries.append((recipe, row["number"]))
        trials.append(record)
    return trials, retries


def recipe_not_finished(recipe: Recipe, rows: list[dict[str, Any]]) -> bool:
    return not any(r["status"] in ("completed", "pruned", "failed") and r["recipe"] == recipe.to_dict() for r in rows)
