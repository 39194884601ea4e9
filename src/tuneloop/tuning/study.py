"""The study driver: propose a recipe, train it, diagnose it, record it, until the budget, the target or
convergence ends the study. Every trial is a run in the workspace, so the best one is a model that
``evaluate`` and ``predict`` take like any other.

    while not done:
        proposal = strategy.propose(...)     # guided: the policy applied to the best trial's diagnosis
        run = train_run(proposal.recipe)     # per-epoch validation, pruning, the budget's deadline
        diagnosis = diagnose(run.history)    # recorded before the next proposal
        same = same_as(run's predictions)    # a trial that changed no prediction counts for nothing

Then the final model is chosen (at most a quarter of the budget). Where validation is too small to tell the
best recipes apart (``selection``), those that are cheap to train are scored by k-fold cross-validation over
every labelled example, and the chosen recipe is trained on all of them. Otherwise, where it can change the
answer, the seed check re-runs the top two recipes with other seeds, and the runs of the winning recipe are
averaged into a soup where they share their initial weights.
"""

from __future__ import annotations

import math
import re
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import optuna

from tuneloop.config import LOWER_IS_BETTER, Recipe
from tuneloop.errors import ConfigError, TuneloopError
from tuneloop.store.workspace import Workspace
from tuneloop.training.loop import Callback, EpochRecord, StopTraining
from tuneloop.tuning.diagnose import Diagnosis, diagnose
from tuneloop.tuning.effect import compact, same_as
from tuneloop.tuning.noise import METRICS as PAIRED_METRICS
from tuneloop.tuning.noise import Difference, paired_difference
from tuneloop.tuning.policy import FEW_PER_CLASS
from tuneloop.tuning.retention import KEEP_MODELS, models_to_discard
from tuneloop.tuning.seeds import (
    CROSS_VALIDATION_PREFIX,
    ENSEMBLE_PREFIX,
    REFIT_PREFIX,
    SEED_CHECK_PREFIX,
    SOUP_PREFIX,
    SeedGroup,
    best_trial,
    combined_in_words,
    is_search,
    kind_of,
    seed_check_plan,
    seed_check_reserve,
    seed_groups,
    seed_verdict,
    winning_group,
)
from tuneloop.tuning.selection import (
    FINAL_SHARE,
    MAX_MEMBERS,
    Estimate,
    candidates,
    choose,
    ensemble_members,
    final_reserve,
    fit_seconds,
    fold_count,
    holdout_estimate,
    pooled_estimate,
    validation_is_small,
)
from tuneloop.tuning.strategies import (
    PRUNERS,
    STRATEGIES,
    Proposal,
    Strategy,
    TrialOutcome,
    best_outcome,
    make_pruner,
    trials_since_gain,
)

EARLY_STOP_SHARE = 0.2  # a plateau ends a study with more of its budget left only when nothing is left to try
SEED_CHECK_SHARE = 0.25  # the most of a budget the seed check may spend (a choice on every example: FINAL_SHARE)
# A final fit's time estimated from its trial's is low by up to a third (tweets, 64 per class, on a 2-core AVX2
# CPU: 35 s estimated, 47 s taken: saving and the longer epochs of more examples): it must fit with this margin.
REFIT_MARGIN = 1.3
DRAW_MARGIN = 1.15  # another draw of a trial's recipe must fit in the time left with this margin (and the soup)
CHEAP_FOLDS_SECONDS = 60.0  # with a trial budget, cross-validation of a recipe that trains more than a head


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
    parent: int | None = None  # the trial whose recipe this one's move changed
    no_effect: str = ""  # where its validation predictions repeat an earlier trial's: the sentence saying so
    predictions: np.ndarray | None = None  # its validation predictions (class ids, or standardized values)
    evidence: dict[str, Any] = field(default_factory=dict)  # of a trial without a diagnosis (cross-validation)
    started: float = 0.0  # time.monotonic() when it started

    def outcome(self, leads: Callable[[int], bool | None] | None = None) -> TrialOutcome:
        return TrialOutcome(self.recipe, self.status, self.value, self.diagnosis, self.number, self.parent,
                            bool(self.no_effect), leads)

    @property
    def kind(self) -> str:
        """What the trial was for: "search", "seed check", "soup", "cross-validation", "refit" or "ensemble"."""
        return kind_of({"reason": self.reason})

    def row(self) -> dict[str, Any]:
        """As ``Workspace.trials`` returns it, for the pure functions of ``seeds``."""
        evidence = self.diagnosis.evidence if self.diagnosis else self.evidence
        return {"number": self.number, "reason": self.reason, "status": self.status, "value": self.value,
                "recipe": self.recipe.to_dict(), "run_id": self.run_id, "no_effect": self.no_effect,
                "evidence": evidence}


@dataclass
class TrainedTrial:
    """What the driver reads of a trial that trained, wherever it trained: its run, the run's recorded epochs
    and metrics, and the loop's own account (epoch records, why it stopped, the best epoch's validation
    predictions). Plain values, so a worker process or a Ray task can send it back."""

    run_id: str
    run_history: list[dict[str, float]]
    metrics: dict[str, Any]
    history: list[EpochRecord]
    stopped_by: str | None
    diverged: bool
    predictions: np.ndarray | None

    @classmethod
    def of(cls, run: Any, result: Any) -> TrainedTrial:
        """From ``train_run``'s run and TrainResult."""
        return cls(run.id, run.history, run.metrics, result.history, result.stopped_by, result.diverged,
                   result.best_val_predictions)


@dataclass(frozen=True)
class TrialFailed:
    """A trial that ended with an error tuneloop raises for bad recipes (diverged in its first epoch): a
    finding, recorded as a failed trial, not a crash of the study."""

    message: str


@dataclass(frozen=True)
class TrialWork:
    """One trial for an executor to train: its number, recipe, checkpoint folder's name, the Optuna trial its
    epochs are reported to, whether a pruner may stop it, and the wall-clock time (``time.time()``) at which
    training stops (None: no time limit)."""

    number: int
    recipe: dict[str, Any]
    checkpoint: str
    optuna_trial_id: int
    prunable: bool
    deadline: float | None


class TrialExecutor(Protocol):
    """Trains search trials away from the driver (``tuning.executors``): ``workers`` at a time."""

    workers: int

    def submit(self, work: TrialWork) -> None: ...

    def wait(self) -> list[tuple[int, TrainedTrial | TrialFailed]]:
        """Block until at least one submitted trial has ended; each ended one's number and outcome."""
        ...

    def close(self) -> None: ...


class StudyCallback:
    """Hooks for a live display of the study."""

    def on_trial_start(self, number: int, recipe: Recipe, reason: str) -> None: ...

    def on_trial_end(self, trial: TrialRecord, best: TrialRecord | None) -> None: ...

    def training_callbacks(self) -> list[Callback]:
        return []


class TrainingDeadline(Callback):
    """Ends training after the step at which the budget's deadline passed (a trial's first phase too: pairs can
    take minutes); the part-epoch is evaluated and the run recorded as it stands."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def on_step(self, epoch: int, step: int, loss: float, samples_per_s: float) -> None:
        if time.monotonic() >= self.deadline:
            raise StopTraining("budget")


class ReportToOptuna(Callback):
    """Feeds the pruner per-epoch values, and ends training when pruned or when the budget is spent.

    Values are reported at the share of the trial's schedule done (percent), not at the epoch number: with
    a decaying learning rate, a 20-epoch trial at epoch 2 is still warming up where a 10-epoch one is well
    on its way, and comparing them there would prune every longer schedule the policy asks for.
    """

    main_phase_only = True  # a run's first phase (pairs) reports nothing a pruner could compare

    def __init__(self, trial: optuna.trial.Trial, metric: str, deadline: float | None, prunable: bool = True,
                 epochs: int = 100):
        self.trial, self.metric, self.deadline, self.prunable = trial, metric, deadline, prunable
        self.epochs = epochs
        self.reported: set[int] = set()

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None:
        value = record.metric(self.metric)
        progress = round(100 * record.epoch / self.epochs)
        if progress not in self.reported:  # beyond 100 epochs, two epochs can round to one percent
            self.reported.add(progress)
            self.trial.report(-value if self.metric in LOWER_IS_BETTER else value, progress)
        # After the last epoch there is nothing left to save: a trial that ran its schedule is complete, whatever
        # the pruner would say (on R8 at 1,000 texts a whole fine-tune below the median at 100% was recorded as
        # pruned, its model out of the running and the search's record wrong).
        if self.prunable and record.epoch < self.epochs and self.trial.should_prune():
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
    choice: str | None = None  # how the final model was chosen


def new_study_id() -> str:
    return "study-" + time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def check_study_options(strategy: str, prune: str, target: float | None, plateau: int | None = None) -> list[str]:
    problems = []
    if plateau is not None and (isinstance(plateau, bool) or not isinstance(plateau, int) or plateau < 0):
        problems.append(f"The 'plateau' parameter must be an int >= 0 (0 never stops on a plateau). "
                        f"Got {plateau!r} instead.")
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
    """The top recipes re-run with more seeds: per recipe the values over seeds, and the verdict (or why the
    check was not run: then there are no groups)."""

    groups: list[SeedGroup]
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict,
                "groups": [{"trial": g.original, "values": g.values, "mean": g.mean, "half_width": g.half_width}
                           for g in self.groups]}


@dataclass(frozen=True)
class FinalSteps:
    """What the driver calls to make models beyond the search's trials (the caller knows the task and the
    workspace); a missing one is a step not taken.

    - ``soup(run_ids, recipe)`` -> (run, validation predictions): the runs' weights averaged;
    - ``ensemble(run_ids, estimate)`` -> run: the runs' models predicting together (their predictions
      averaged), recorded with ``estimate`` as its scores;
    - ``cross_validate(recipe, folds)`` -> a ``pipeline.CrossValidation`` or None: the recipe by k-fold
      cross-validation over every labelled example;
    - ``refit(recipe, estimate, callbacks, checkpoint_name)`` -> run: the recipe trained on every labelled
      example, recorded with ``estimate`` as its scores;
    - ``shares_start``: runs of one recipe can start from the same weights (a pretrained body, the new head
      seeded by ``init_seed``), so the seed check's runs are made that way and can be averaged.
    """

    soup: Callable[[list[str], Recipe], Any] | None = None
    ensemble: Callable[[list[str], dict[str, Any]], Any] | None = None
    cross_validate: Callable[[Recipe, int], Any] | None = None
    refit: Callable[..., Any] | None = None
    shares_start: bool = False


def run_study(store: Workspace, study_id: str, task: Any, base: Recipe, strategy: Strategy, budget: Budget, *,
              target: float | None, prune: str, train_trial, callbacks: Sequence[StudyCallback] = (),
              spent_before: float = 0.0, seed_check: bool = True, final: FinalSteps = FinalSteps(),
              keep_models: int | None = KEEP_MODELS, executor: TrialExecutor | None = None) -> StudyResult:
    """Drive a study to its end. ``train_trial(recipe, training_callbacks, checkpoint_name)`` trains one run,
    saving each epoch under ``checkpoint_name`` and continuing from there if a saved epoch exists. At the end
    only the final model, what it is made of, the ``keep_models`` best and registered models stay on disk
    (None: every model).

    With an ``executor``, search trials and the seed check's re-runs train there, ``executor.workers`` at a
    time (the strategy proposes that many where it has them); the final choice's fits stay in this process.

    Resuming is running this again on the same ``study_id``: finished trials are read back, interrupted
    ones re-run first, and the time budget counts what was spent before.
    """
    driver = _StudyDriver(store, study_id, task, base, strategy, budget, target, prune, train_trial, callbacks,
                          spent_before)
    driver.final, driver.executor = final, executor
    result = driver.run(seed_check)
    if keep_models is not None:
        discard_models(store, study_id, keep_models)
    return result


def discard_models(store: Workspace, study_id: str, keep: int) -> int:
    """Remove the models of a finished study that ``models_to_discard`` lets go; returns the bytes freed."""
    why = (f"model removed when study {study_id} ended: neither its final model nor among its {keep} best (the "
           "record, metrics and curves stay; tune --keep-models sets how many models stay)")
    return sum(store.discard_model(run_id, why)
               for run_id in models_to_discard(store.trials(study_id), store.registered_run_ids(), keep))


class _StudyDriver:
    final = FinalSteps()
    executor: TrialExecutor | None = None
    seed_check = True  # whether the search leaves the seed check its share (set by run)

    def __init__(self, store, study_id, task, base, strategy, budget, target, prune, train_trial, callbacks,
                 spent_before):
        # metric "auto" made concrete: every trial is scored, reported and diagnosed by the same one
        self.store, self.study_id, self.task = store, study_id, task
        self.base = base.for_objective(task.objective.name)
        self.strategy, self.budget, self.target = strategy, budget, target
        self.train_trial, self.callbacks = train_trial, callbacks
        storage = store.optuna_storage()
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
        self.accounted = time.monotonic()  # the study's spent time is recorded up to here
        self.pending: dict[int, tuple[TrialRecord, Proposal, str]] = {}  # trials training in the executor
        self.differences: dict[tuple[int, int], Difference | None] = {}  # paired comparisons made so far

    def run(self, seed_check: bool) -> StudyResult:
        self.seed_check = seed_check
        stop_reason = self._search(seed_check)
        check, choice = None, None
        if self._validation_is_small():
            choice = self._choose_on_every_example()
        elif seed_check:
            check = self._seed_check()
            choice = check.verdict
            if check.groups:
                self._soup()
        best = _best_after_check(self.trials)
        if check is not None and not check.groups and best is not None:
            choice = f"trial {best.number}'s own model, the best by validation score (the seed check was {choice})"
        elif check is not None and best is not None:
            choice = f"{choice}; handed back: {combined_in_words(best.row())}"
        self.store.finish_study(self.study_id, stop_reason, choice)
        return StudyResult(self.study_id, self.trials, best, stop_reason, time.monotonic() - self.started, check,
                           choice)

    def _search(self, seed_check: bool) -> str:
        """Propose and train search trials until the search must stop; returns why. With an executor, up to its
        workers train at once: the strategy is asked again while a worker is free (it sees the trials in flight
        as tried), and a strategy with nothing to propose now waits for the next trial to end before it gives
        up."""
        workers = self.executor.workers if self.executor is not None else 1
        while True:
            stop_reason = ""
            while len(self.pending) < workers:
                stop_reason = self._stop_reason(seed_check)
                if stop_reason:
                    break
                retry, retry_number = self.retries[0] if self.retries else (None, None)
                proposed = [self._outcome(t) for t in self._search_trials() if t.status != "interrupted"]
                search_end = self._search_deadline(seed_check)
                seconds_left = None if search_end is None else search_end - time.monotonic()
                proposal = self.strategy.propose(self.study, self.base, proposed, retry, seconds_left)
                if proposal is None:
                    stop_reason = self.strategy.done_reason()
                    break
                if retry is not None:
                    self.retries.pop(0)
                # An interrupted trial's re-run continues from the epochs its first attempt saved.
                number = retry_number if retry_number is not None else len(self.trials)
                self._launch(proposal, f"trial-{number}")
            if not self.pending:
                return stop_reason
            self._collect()

    def _collect(self) -> None:
        """Wait for the executor's next trials to end, and record them."""
        for number, outcome in self.executor.wait():
            record, proposal, checkpoint_name = self.pending.pop(number)
            self._finish(record, proposal, checkpoint_name, outcome)

    def _search_trials(self) -> list[TrialRecord]:
        return [t for t in self.trials if is_search(t.row())]

    def _stop_reason(self, seed_check: bool) -> str:
        """Why the search ends now, or "" to go on. A plateau ends it only with at most a fifth of the budget
        left, or nothing with an expected gain left untried; the reason names what was left."""
        if not self.store.holds_study(self.study_id):
            return "another process took the study over (this one's lease ran out)"
        search = [t for t in self._search_trials() if t.status != "interrupted"]
        budget, now = self.budget, time.monotonic()
        if budget.trials is not None and len(search) >= budget.trials:
            return f"the budget of {budget.trials} trials is spent"
        if self.deadline is not None:
            if now >= self.deadline:
                return f"the time budget of {budget} is spent"
            if now >= self._search_deadline(seed_check):
                return (f"the search stopped with {self.deadline - now:.0f}s of the time budget of {budget} left, "
                        f"kept for choosing the final model")
        best = _best(search)
        if self.target is not None and best is not None and best.value >= self._target_value():
            return f"the target {self.target:g} is reached"
        outcomes = [self._outcome(t) for t in search]
        since = trials_since_gain(outcomes)
        if not self.strategy.plateau or since < self.strategy.plateau:
            return ""
        left = self._budget_left(len(search), now)
        untried = self.strategy.untried(outcomes)
        if untried and left > EARLY_STOP_SHARE:
            return ""  # the strategy tries them next
        found = f"no gain beyond validation noise in {since} trials"
        if not untried:
            return f"{found}, and nothing with an expected gain is left untried"
        return f"{found}, with {left:.0%} of the budget left; not tried: {'; '.join(untried)}"

    def _target_value(self) -> float:
        """The target as a value: trials' values are minus the metric where lower is better (loss, MAE, RMSE)."""
        return -self.target if self.base.metric in LOWER_IS_BETTER else self.target

    def _budget_left(self, trials_done: int, now: float) -> float:
        """The share of the budget not yet spent (of the time, or of the trials)."""
        if self.budget.seconds:
            return max(0.0, (self.deadline - now) / self.budget.seconds)
        return max(0.0, 1.0 - trials_done / self.budget.trials)

    def _search_deadline(self, seed_check: bool) -> float | None:
        """With a time budget, the search stops early enough to leave the final choice its share, as the trials
        stand now: the fits on every labelled example of the recipes in the running where validation is small
        (an ensemble's members; at most FINAL_SHARE of the budget), else the seed check where it can change the
        answer (at most SEED_CHECK_SHARE)."""
        if self.deadline is None:
            return None
        if self._validation_is_small():
            # Held back: what the final choice of each recipe in the running takes (a head on cached vectors is
            # cross-validated first; then the fit on every example, at its own epochs, else at its best epoch,
            # as _final_fit tries), for those that fit in FINAL_SHARE of the budget.
            needs = []
            for row in candidates([t.row() for t in self._search_trials()])[:MAX_MEMBERS]:
                trial = self.trials[row["number"]]
                folds = (self._folds_seconds(trial, self._fold_count)
                         if _cached_head(trial.recipe) and self._fold_count >= 2 else 0.0)
                best_epoch = (trial.diagnosis.evidence.get("best_epoch") if trial.diagnosis else None)
                fits = [self._refit_cost(trial)]
                if best_epoch and best_epoch < trial.recipe.epochs:
                    fits.append(self._refit_cost(trial, trial.recipe.replace(epochs=int(best_epoch))))
                needs.append([folds + fit for fit in fits])
            return self.deadline - final_reserve(needs, FINAL_SHARE * self.budget.seconds)
        if seed_check:
            planned, _ = seed_check_plan([t.row() for t in self._search_trials()], self._paired)
            one_each = sum(self.trials[n].seconds for n in planned)
            return self.deadline - seed_check_reserve(one_each, SEED_CHECK_SEEDS,
                                                      SEED_CHECK_SHARE * self.budget.seconds)
        return self.deadline

    def _outcome(self, record: TrialRecord) -> TrialOutcome:
        """What the strategy and the stopping rule read of a trial, with its leads measured on the pair."""

        def leads(other: int) -> bool | None:
            difference = self._paired(record.number, other)
            return None if difference is None else difference.beyond_noise

        return record.outcome(leads)

    def _paired(self, first: int, second: int) -> Difference | None:
        """Trial ``first``'s score minus trial ``second``'s in the chosen metric, with the paired interval of that
        difference over the validation examples (``noise.paired_difference``); None where it cannot be measured
        (a regressor, a loss, predictions of another validation set). Measured once per pair."""
        key = (first, second)
        if key in self.differences:
            return self.differences[key]
        mine, theirs = self.trials[first].predictions, self.trials[second].predictions
        if (self.task.objective.name != "classification" or self.base.metric not in PAIRED_METRICS
                or mine is None or theirs is None):
            return None  # not kept: a trial still training has its predictions later
        index = {str(name): i for i, name in enumerate(self.task.classes)}
        labels = [index.get(str(label)) for label in self.task.val_labels]
        measurable = None not in labels and len(mine) == len(theirs) == len(labels) > 0
        self.differences[key] = (paired_difference(np.asarray(labels), mine, theirs, len(self.task.classes),
                                                   self.base.metric) if measurable else None)
        return self.differences[key]

    def _validation_is_small(self) -> bool:
        """Whether the final model is chosen on every labelled example (validation too small, refit allowed)."""
        return self.final.refit is not None and self._small_validation()

    def _small_validation(self) -> bool:
        best = _best(self._search_trials())
        return validation_is_small(best.row() if best else None, len(self.task.val),
                                   self.task.objective.predicts_values)

    def _refit_cost(self, trial: TrialRecord, recipe: Recipe | None = None) -> float:
        """Seconds a fit of ``recipe`` (by default ``trial``'s own) on every labelled example takes, with
        REFIT_MARGIN, from the trial's times: every epoch of the recipe (the trial may have stopped early; the
        fit does not), over all the examples (its pairs, where it tunes on pairs, stay as many: they are in the
        trial's fixed part)."""
        recipe = recipe or trial.recipe
        return REFIT_MARGIN * fit_seconds(trial.seconds, [epoch["seconds"] for epoch in trial.history],
                                          recipe.epochs,
                                          (len(self.task.train) + len(self.task.val)) / max(1, len(self.task.train)))

    def _fits(self, trial: TrialRecord, recipe: Recipe) -> bool:
        """Whether a fit of ``recipe`` on every example ends before the budget's deadline (if it has one)."""
        return self.deadline is None or time.monotonic() + self._refit_cost(trial, recipe) <= self.deadline

    def _choose_on_every_example(self) -> str:
        """The final model where validation is small: the recipes within noise of the best scored by k-fold
        cross-validation where the folds fit in the time left (a head on cached vectors always), else by
        validation; the best of them trained on every labelled example if that fits in the budget left, and
        with it, where they fit too, the others still within noise of it, handed back as an ensemble that
        averages their predictions. Returns how it was chosen."""
        chosen = candidates([t.row() for t in self._search_trials()])
        if not chosen:
            return "no completed trial to choose from"
        labels = self.task.pool_labels()
        k = self._fold_count
        estimates: dict[int, Estimate] = {}
        best_epochs: dict[int, int] = {}
        for row in chosen:
            trial = self.trials[row["number"]]
            folds = self._affordable_folds(trial, k, chosen) if self.final.cross_validate is not None and k >= 2 else 0
            if folds:
                measured = self._cross_validate(trial, folds)
                if measured is not None:
                    estimates[trial.number], best_epochs[trial.number] = measured
            estimates.setdefault(trial.number, holdout_estimate(row))
        favoured = {n for n in estimates if self.trials[n].recipe.contrastive > 0 and self._few_per_class()}
        frozen_heads = {n for n in estimates if _cached_head(self.trials[n].recipe)}
        number = choose(estimates, favoured, over=frozen_heads)
        said = estimates[number].sentence(self.base.metric)
        members = ensemble_members(estimates, number) if self.final.ensemble is not None else [number]
        lead = self._final_fit(number, estimates[number], best_epochs.get(number))
        if lead is None and (len(members) == 1 or self.trials[number].run_id is None):
            return (f"the recipe of trial {number} by {said}; not trained again on every labelled example: that "
                    f"would not fit in the budget left")
        # Without the leader's final fit, its own model (trained on the training examples) still leads the
        # others' final fits where any fit: their average hedges a choice made on a handful of examples.
        fitted = [(number, lead or self.trials[number])]
        # With it, a fine-tune's final fit is one draw of a noisy run that nothing is left to check (a recipe's
        # test accuracy moves by points from seed to seed, arXiv:2002.06305); the trial's own model of the same
        # recipe is a second draw the search already paid for, and their average varies less than either. A
        # head on cached vectors trains near-deterministically: its own model would add nothing.
        own = self.trials[number]
        with_own = (lead is not None and own.run_id is not None and not _cached_head(own.recipe)
                    and self.final.ensemble is not None)
        if with_own:  # in place of the last recipe within noise: at most MAX_MEMBERS models predict together
            fitted.append((number, own))
            members = members[:MAX_MEMBERS - 1]
        fitted += [(member, record) for member in members[1:]
                   if (record := self._final_fit(member, estimates[member], best_epochs.get(member))) is not None]
        n = len(labels)
        said_lead = (f"the recipe of trial {number}, chosen by {said}, trained on all {n} labelled examples for "
                     f"{lead.recipe.epochs} epochs" if lead is not None else "")
        if len(fitted) == 1 and lead is not None:
            return said_lead
        if len(fitted) == 1:
            return (f"the recipe of trial {number} by {said}; not trained again on every labelled example, nor "
                    f"any recipe within noise of it: that would not fit in the budget left")
        self._ensemble(fitted, estimates[number])
        others = ", ".join(f"trial {member} ({estimates[member].sentence(self.base.metric)})"
                           for member, model in fitted[1:] if model.number != number)
        if lead is None:
            return (f"an ensemble averaging the predictions of trial {number}'s own model (chosen by {said}; "
                    f"trained again on every labelled example it would not fit in the budget left) and of the "
                    f"final fits on all {n} labelled examples of the recipes within noise of it: {others}")
        own_model = (f" and trial {number}'s own model (the same recipe on the {len(self.task.train)} training "
                     f"examples)" if with_own else "")
        if not others:
            return f"an ensemble averaging the predictions of {said_lead}{own_model}"
        return (f"an ensemble averaging the predictions of {said_lead}{own_model}, and of the final fits on all "
                f"{n} labelled examples of the recipes within noise of it: {others}")

    def _final_fit(self, number: int, estimate: Estimate, cross_validated_epoch: int | None
                   ) -> TrialRecord | None:
        """Trial ``number``'s recipe trained on every labelled example, where that fits in the budget left (as
        many epochs as the trial itself trained, or as its best epoch, where its full count would not); None
        where it does not fit or fails."""
        trial = self.trials[number]
        recipe = self._refit_recipe(trial, cross_validated_epoch)
        # Fewer epochs where the recipe's own would not fit: as many as the trial trained, else as many as
        # its best epoch (the model it would hand back otherwise stopped there, on fewer examples).
        best_epoch = (trial.diagnosis.evidence.get("best_epoch") if trial.diagnosis else None) or recipe.epochs
        for epochs in (recipe.epochs, len(trial.history) or recipe.epochs, best_epoch):
            if epochs <= recipe.epochs and self._fits(trial, recipe.replace(epochs=epochs)):
                recipe = recipe.replace(epochs=epochs)
                break
        else:
            return None
        record = self._refit(trial, recipe, estimate)
        return record if record.status == "completed" else None

    def _few_per_class(self) -> bool:
        """Whether the rarest class has at most FEW_PER_CLASS labelled examples."""
        if self.task.objective.name != "classification":
            return False
        _, counts = np.unique(np.asarray([str(y) for y in self.task.pool_labels()]), return_counts=True)
        return bool(len(counts)) and int(counts.min()) <= FEW_PER_CLASS

    def _affordable_folds(self, trial: TrialRecord, k: int, chosen: list[dict[str, Any]]) -> int:
        """How many folds of ``trial``'s recipe fit (0: none): a head on cached vectors ``k`` always (seconds);
        another recipe the most folds, from ``k`` down to 3, whose runs (every epoch: folds do not stop early)
        and the final fits of the ``chosen`` (an ensemble's worth) fit in the time left (with a trial budget:
        where the folds take at most CHEAP_FOLDS_SECONDS). The search is over: its time left is the final
        choice's."""
        if _cached_head(trial.recipe):
            return k
        refits = sum(self._refit_cost(self.trials[row["number"]]) for row in chosen[:MAX_MEMBERS])
        for folds in range(k, 2, -1):
            cost = self._folds_seconds(trial, folds)
            if self.deadline is None:
                fits = cost <= CHEAP_FOLDS_SECONDS
            else:
                fits = cost + refits <= self.deadline - time.monotonic()
            if fits:
                return folds
        return 0

    @cached_property
    def _fold_count(self) -> int:
        """Folds of cross-validation over every labelled example (they do not change during a study)."""
        return fold_count(self.task.pool_labels(), self.task.objective.predicts_values)

    def _folds_seconds(self, trial: TrialRecord, folds: int) -> float:
        """Seconds ``folds``-fold cross-validation of ``trial``'s recipe takes (every epoch of every fold), from
        the trial's own times."""
        pooled = len(self.task.train) + len(self.task.val)
        scale = (folds - 1) / folds * pooled / max(1, len(self.task.train))
        epochs = [epoch["seconds"] for epoch in trial.history]
        return folds * fit_seconds(trial.seconds, epochs, trial.recipe.epochs, scale)

    def _cross_validate(self, trial: TrialRecord, k: int) -> tuple[Estimate, int] | None:
        """Score ``trial``'s recipe by k-fold cross-validation, recorded as a trial of its own (no model)."""
        started = time.monotonic()
        measured = self.final.cross_validate(trial.recipe, k)
        if measured is None:
            return None
        value = objective_value(measured.metrics, self.base.metric)
        estimate = pooled_estimate(value, measured.metrics.get("val_accuracy"), measured.n, measured.k)
        reason = (f"{CROSS_VALIDATION_PREFIX}: the recipe of trial {trial.number}, {measured.k} folds over all "
                  f"{measured.n} labelled examples")
        record = TrialRecord(len(self.trials), trial.recipe, reason, "completed", value=value, parent=trial.number,
                             evidence={"of_trial": trial.number, "n": measured.n, "k": measured.k,
                                       "ci_low": estimate.low, "ci_high": estimate.high,
                                       "best_epoch": measured.best_epoch, **measured.metrics})
        self._record_extra(record, time.monotonic() - started)
        return estimate, measured.best_epoch

    def _refit_recipe(self, trial: TrialRecord, cross_validated_epoch: int | None) -> Recipe:
        """``trial``'s recipe for a fit with nothing to validate on, and as many pairs in all as it drew. Its
        epochs: the best epoch over cross-validation's folds together, where it was cross-validated; else the
        recipe's own (its trial's best epoch was read off a validation set too small to place it)."""
        epochs = cross_validated_epoch or trial.recipe.epochs
        recipe = trial.recipe.replace(epochs=max(1, epochs), patience=0)
        if recipe.contrastive > 0:
            pooled = len(self.task.train) + len(self.task.val)
            recipe = recipe.replace(contrastive=max(2, round(recipe.contrastive * len(self.task.train) / pooled)))
        return recipe

    def _refit(self, trial: TrialRecord, recipe: Recipe, estimate: Estimate) -> TrialRecord:
        """The study's final model: ``recipe`` trained on every labelled example, recorded as a trial whose
        value is the estimate the recipe was chosen by."""
        n = len(self.task.train) + len(self.task.val)
        reason = (f"{REFIT_PREFIX}: the recipe of trial {trial.number} on all {n} labelled examples (training and "
                  f"validation), {recipe.epochs} epochs; its score is the estimate the recipe was chosen by, "
                  f"{estimate.by}")
        record = TrialRecord(len(self.trials), recipe, reason, parent=trial.number,
                             evidence={"estimated_by": estimate.by, "ci_low": estimate.low, "ci_high": estimate.high})
        scores = {"estimated_by": estimate.by, "estimate_interval": [estimate.low, estimate.high],
                  "refit_of_trial": trial.number}
        if trial.run_id is not None:
            scores.update({k: v for k, v in self._run_metrics(trial).items() if k.startswith("val_")})
        training = [c for cb in self.callbacks for c in cb.training_callbacks()]
        name = f"refit-{trial.number}"
        return self._final_model(record, estimate.value, lambda: self.final.refit(recipe, scores, training, name),
                                 checkpoint_name=name)

    def _ensemble(self, members: list[tuple[int, TrialRecord]], estimate: Estimate) -> None:
        """The study's final model: the models of ``members`` (each a chosen trial's number and the trial
        holding its model: its final fit, or for the lead the trial itself where its final fit did not fit;
        the lead first) predicting together, recorded as a trial whose value is the lead's estimate (no example
        is left to score the ensemble on)."""
        numbers = [number for number, _ in members]
        models = [model for _, model in members]
        lead = models[0]
        made_of = ", ".join(f"trial {number}'s own model" if model.number == number else
                            f"the final fit of trial {number} (trial {model.number})" for number, model in members)
        reason = (f"{ENSEMBLE_PREFIX}: {made_of}, averaging their predictions; its score is the estimate of its "
                  f"lead, trial {numbers[0]}'s recipe, {estimate.by}")
        record = TrialRecord(len(self.trials), lead.recipe, reason, parent=lead.number,
                             evidence={"members": [m.number for m in models], "estimated_by": estimate.by,
                                       "ci_low": estimate.low, "ci_high": estimate.high})
        scores = {"estimated_by": estimate.by, "estimate_interval": [estimate.low, estimate.high],
                  "ensemble_of_trials": numbers}
        # Its lead's scores, as a refit reports its recipe's: what the choice was made by.
        scores.update({k: v for k, v in self._run_metrics(lead).items() if k.startswith("val_")})
        self._final_model(record, estimate.value, lambda: self.final.ensemble([m.run_id for m in models], scores),
                          errors=(TuneloopError, OSError))

    def _final_model(self, record: TrialRecord, value: float, make: Callable[[], Any], *,
                     errors: tuple[type[BaseException], ...] = (TuneloopError,),
                     checkpoint_name: str | None = None) -> TrialRecord:
        """Make a final model (a refit, an ensemble) with ``make`` and record it as the trial ``record``,
        valued at ``value`` (the estimate it was chosen by): failed where ``make`` raises one of ``errors``."""
        optuna_trial = self._start_extra(record)
        started = time.monotonic()
        try:
            run = make()
        except errors as exc:
            record.status, record.diagnosis = "failed", _failed_diagnosis(str(exc))
            self.study.tell(optuna_trial, state=optuna.trial.TrialState.FAIL)
        else:
            record.run_id, record.status, record.value = run.id, "completed", value
            self.study.tell(optuna_trial, value)
        record.seconds = time.monotonic() - started
        if checkpoint_name is not None:
            _clear_checkpoint(self.store, self.study_id, checkpoint_name)
        self._end(record)
        for callback in self.callbacks:
            callback.on_trial_end(record, record if record.status == "completed" else _best(self.trials))
        return record

    def _run_metrics(self, trial: TrialRecord) -> dict[str, Any]:
        """The recorded metrics of ``trial``'s run, or of its cross-validation where it had one."""
        for other in reversed(self.trials):
            if other.reason.startswith(CROSS_VALIDATION_PREFIX) and other.evidence.get("of_trial") == trial.number:
                return {k: v for k, v in other.evidence.items() if k.startswith("val_")}
        return {k: v for k, v in self.store.run_metrics(trial.run_id).items()}

    def _start_extra(self, record: TrialRecord) -> optuna.trial.Trial:
        """Start a trial made after the search (a cross-validation, a refit): Optuna and the workspace know it."""
        optuna_trial = self.study.ask()
        optuna_trial.set_user_attr("tuneloop_recipe", record.recipe.to_dict())
        self._open(record, optuna_trial.number)
        return optuna_trial

    def _record_extra(self, record: TrialRecord, seconds: float) -> None:
        """Record a finished measurement made after the search (no model of its own)."""
        optuna_trial = self._start_extra(record)
        self.study.tell(optuna_trial, record.value)
        record.seconds = seconds
        self._end(record)
        for callback in self.callbacks:
            callback.on_trial_end(record, _best(self._search_trials()))

    def _run_trial(self, proposal: Proposal, checkpoint_name: str) -> TrialRecord:
        """Train one trial to its end (in the executor where there is one) and return its record."""
        record = self._launch(proposal, checkpoint_name)
        while record.number in self.pending:
            self._collect()
        return record

    def _launch(self, proposal: Proposal, checkpoint_name: str) -> TrialRecord:
        """Start a trial: recorded as running, then trained here (to its end) or sent to the executor."""
        record = TrialRecord(len(self.trials), proposal.recipe, proposal.reason, parent=proposal.parent)
        self._open(record, proposal.trial.number)
        # A seed-check re-run measures seed noise: cutting it short would hide exactly that. Where validation is
        # too small to tell recipes apart, it is too small to tell a trial's first epochs apart from others' too.
        prunable = not proposal.reason.startswith(SEED_CHECK_PREFIX) and not self._small_validation()
        # A search trial stops where the search must, leaving the final choice (final fits, the seed check) the
        # share it was kept; one started near that point would otherwise spend it, and the study hand back a
        # trial's model instead of its final fit.
        stop_at = self.deadline
        if self.deadline is not None and is_search({"reason": proposal.reason}):
            stop_at = min(self.deadline, self._search_deadline(self.seed_check))
        if self.executor is not None:
            wall_deadline = None if stop_at is None else time.time() + (stop_at - time.monotonic())
            # Optuna's trial id (not its number) is what a worker's own Trial object is made from.
            self.executor.submit(TrialWork(record.number, proposal.recipe.to_dict(), checkpoint_name,
                                           proposal.trial._trial_id, prunable, wall_deadline))
            self.pending[record.number] = (record, proposal, checkpoint_name)
            return record
        reporter = ReportToOptuna(proposal.trial, self.base.metric, stop_at, prunable=prunable,
                                   epochs=proposal.recipe.epochs)
        training_callbacks = [c for cb in self.callbacks for c in cb.training_callbacks()] + [reporter]
        if stop_at is not None:
            training_callbacks.append(TrainingDeadline(stop_at))
        try:
            run, result = self.train_trial(proposal.recipe, training_callbacks, checkpoint_name)
        except TuneloopError as exc:  # e.g. diverged in the first epoch: a finding, not a crash of the study
            outcome: TrainedTrial | TrialFailed = TrialFailed(str(exc))
        else:
            outcome = TrainedTrial.of(run, result)
        self._finish(record, proposal, checkpoint_name, outcome)
        return record

    def _finish(self, record: TrialRecord, proposal: Proposal, checkpoint_name: str,
                outcome: TrainedTrial | TrialFailed) -> None:
        """Diagnose and record a trial that ended, and tell Optuna."""
        best_before = _best([t for t in self.trials if t is not record])
        if isinstance(outcome, TrialFailed):
            record.status = "failed"
            record.diagnosis = _failed_diagnosis(outcome.message)
            self.study.tell(proposal.trial, state=optuna.trial.TrialState.FAIL)
        else:
            metric = self.base.metric
            record.run_id, record.history = outcome.run_id, outcome.run_history
            record.value = objective_value(outcome.metrics, metric)
            record.status = trial_status(outcome.stopped_by, proposal.reason.startswith(SEED_CHECK_PREFIX))
            record.diagnosis = diagnose(outcome.history, diverged=outcome.diverged, n_val=len(self.task.val),
                                        num_classes=len(self.task.classes), metric=metric,
                                        objective=self.task.objective.name,
                                        start_loss=self.task.chance_loss())
            self._compare(record, outcome.predictions)
            if record.status != "completed":
                self.study.tell(proposal.trial, state=optuna.trial.TrialState.PRUNED)
            else:
                self.study.tell(proposal.trial, record.value)
        record.seconds = time.monotonic() - record.started
        _clear_checkpoint(self.store, self.study_id, checkpoint_name)
        self._end(record)
        for callback in self.callbacks:
            callback.on_trial_end(record, _best(self.trials) or best_before)

    def _compare(self, record: TrialRecord, predictions: np.ndarray | None) -> None:
        """Keep the trial's validation predictions, and say so where they repeat an earlier trial's."""
        if predictions is None:
            return
        regression = self.task.objective.predicts_values
        earlier = [(t.number, t.predictions) for t in self.trials if t.predictions is not None]
        same = same_as(predictions, earlier, regression)
        record.predictions = compact(predictions, regression)
        if same is not None:
            record.no_effect = same.sentence()

    def _end(self, record: TrialRecord) -> None:
        """Record a finished trial (the workspace first, so a kill after this line loses nothing)."""
        predictions = None if record.predictions is None else record.predictions.tolist()
        self.store.end_trial(self.study_id, record.number, status=record.status, run_id=record.run_id,
                             value=record.value, diagnosis=record.diagnosis.label if record.diagnosis else None,
                             summary=record.diagnosis.summary if record.diagnosis else None,
                             evidence=record.diagnosis.evidence if record.diagnosis else record.evidence or None,
                             seconds=record.seconds, no_effect=record.no_effect, predictions=predictions)
        # Wall time, not the trial's own: trials that train at once spend the budget together.
        now = time.monotonic()
        self.store.add_spent(self.study_id, now - self.accounted)
        self.accounted = now

    def _open(self, record: TrialRecord, optuna_number: int) -> None:
        """Record a trial as running (it holds its number from here on, whenever it ends)."""
        self.store.start_trial(self.study_id, record.number, optuna_number, record.recipe.to_dict(), record.reason,
                               record.parent)
        record.started = time.monotonic()
        self.trials.append(record)
        for callback in self.callbacks:
            callback.on_trial_start(record.number, record.recipe, record.reason)

    def _seed_check(self) -> SeedCheck:
        """Re-run the top two recipes with more seeds, so that the winner's lead can be weighed against seed
        noise before it is called best: only where that can change the answer, and within a quarter of the
        budget (of its time; of a trial budget, as many runs again). Where it cannot change the answer, time
        the search left unspent buys more draws of the lead's recipe instead (``_draws``)."""
        planned, why_not = seed_check_plan([t.row() for t in self._search_trials()], self._paired)
        if not planned:
            return self._draws(why_not)
        originals = [self.trials[n] for n in planned]
        seeds = self._affordable_seeds(originals)
        if seeds == 0:
            return self._draws("its re-runs do not fit in a quarter of the budget")
        self._rerun(originals, seeds, "the recipe of trial {number} with seed {seed}")
        groups = seed_groups([t.row() for t in self.trials])
        return SeedCheck(groups, seed_verdict(groups))

    def _draws(self, why_not: str) -> SeedCheck:
        """Where the seed check cannot change the answer (or its re-runs do not fit in its share) and the search
        stopped with time left (its strategy had nothing left to try), the lead's recipe trained again with
        other seeds from the same initial weights, as many runs as fit before the deadline (at most
        SEED_CHECK_SEEDS), so that ``_soup`` can combine them with the lead: a fine-tune's accuracy moves by
        points from seed to seed (arXiv:2002.06305), and the combination of several draws varies less than any
        one. Not for a head on cached vectors (it trains near-deterministically), nor where runs start from
        different weights, nor with a trial budget (the user counted the trials)."""
        not_run = SeedCheck([], f"not run: {why_not}")
        lead = _best(self._search_trials())
        if (lead is None or lead.run_id is None or lead.no_effect or _cached_head(lead.recipe)
                or self.deadline is None or self.budget.trials is not None or self.final.soup is None
                or not self.final.shares_start or lead.seconds <= 0):
            return not_run
        seeds = min(SEED_CHECK_SEEDS, int((self.deadline - time.monotonic()) // (DRAW_MARGIN * lead.seconds)))
        if seeds == 0:
            return not_run
        self._rerun([lead], seeds, "another draw of the recipe of trial {number}, seed {seed}, in the time the "
                                   "search left")
        groups = seed_groups([t.row() for t in self.trials])
        return SeedCheck(groups, f"not run to choose ({why_not}); with the time the search left, "
                                 f"{seed_verdict(groups)}")

    def _rerun(self, originals: list[TrialRecord], seeds: int, says: str) -> None:
        """Train each of ``originals``' recipes again with ``seeds`` other seeds (from the same initial weights
        where runs can start alike), as seed-check trials whose reason ``says`` (formatted with the original's
        number and the seed)."""
        for trial in originals:
            for offset in range(1, seeds + 1):
                recipe = trial.recipe.replace(seed=(trial.recipe.seed + offset) % 2**32)
                if self.final.shares_start:  # the same initial weights as the original: their average is a model
                    recipe = recipe.replace(init_seed=trial.recipe.weights_seed)
                if any(t.recipe == recipe and t.status == "completed" for t in self.trials):
                    continue
                optuna_trial = self.study.ask()
                optuna_trial.set_user_attr("tuneloop_recipe", recipe.to_dict())
                reason = f"{SEED_CHECK_PREFIX}: {says.format(number=trial.number, seed=recipe.seed)}"
                name = f"seed-{trial.number}-{recipe.seed}"
                while len(self.pending) >= (self.executor.workers if self.executor is not None else 1):
                    self._collect()
                self._launch(Proposal(optuna_trial, recipe, reason, trial.number), name)
        while self.pending:
            self._collect()

    def _affordable_seeds(self, originals: list[TrialRecord]) -> int:
        """Seeds per recipe (at most SEED_CHECK_SEEDS) whose re-runs fit in SEED_CHECK_SHARE of the budget, and
        before its deadline."""
        if self.budget.trials is not None:
            runs = int(self.budget.trials * SEED_CHECK_SHARE)
            return min(SEED_CHECK_SEEDS, runs // len(originals))
        one_each = sum(t.seconds for t in originals)
        # Past the deadline (the search ran to it where no time was held for the check) the allowance is
        # negative: no seeds, not a negative count that reads as some.
        allowance = max(0.0, min(SEED_CHECK_SHARE * self.budget.seconds, self.deadline - time.monotonic()))
        return min(SEED_CHECK_SEEDS, int(allowance // one_each)) if one_each > 0 else SEED_CHECK_SEEDS

    def _soup(self) -> None:
        """Combine the winning recipe's runs into one model (their weight average, or their averaged predictions
        where those score higher: ``FinalSteps.soup``), where they started from the same weights and really
        differ; it is handed back where it scores at least their mean (seeds.best_trial)."""
        winner = winning_group([t.row() for t in self.trials])
        if winner is None or self.final.soup is None or not self.final.shares_start:
            return
        members = [self.trials[t["number"]] for t in winner.trials]
        members = [t for t in members if t.status == "completed" and t.run_id and not t.no_effect]
        if len(members) < 2 or len({t.recipe.weights_seed for t in members}) > 1:
            return
        optuna_trial = self.study.ask()
        recipe = members[0].recipe
        optuna_trial.set_user_attr("tuneloop_recipe", recipe.to_dict())
        numbers = ", ".join(str(t.number) for t in members)
        reason = (f"{SOUP_PREFIX}: trials {numbers} combined, one recipe over {len(members)} seeds from the same "
                  f"initial weights: their weight average, or their averaged predictions where those score higher "
                  f"on validation")
        record = TrialRecord(len(self.trials), recipe, reason, parent=members[0].number)
        self._open(record, optuna_trial.number)
        started = time.monotonic()
        try:
            run, predictions = self.final.soup([t.run_id for t in members], recipe)
        except TuneloopError as exc:
            record.status = "failed"
            record.diagnosis = _failed_diagnosis(str(exc))
            self.study.tell(optuna_trial, state=optuna.trial.TrialState.FAIL)
        else:
            record.run_id, record.status = run.id, "completed"
            record.value = objective_value(run.metrics, self.base.metric)
            record.evidence = {"combined_by": "averaged predictions" if run.metrics.get("averaged_predictions_of")
                               else "weight average"}
            self._compare(record, predictions)
            self.study.tell(optuna_trial, record.value)
        record.seconds = time.monotonic() - started
        self._end(record)
        for callback in self.callbacks:
            callback.on_trial_end(record, _best_after_check(self.trials))


def trial_status(stopped_by: str | None, seed_check_run: bool) -> str:
    """How a trial that trained ended: "pruned" (its pruner stopped it), "stopped" (a seed-check re-run cut short
    by the budget: a shorter run is not a sample of its recipe's seed noise, so it enters no mean) or
    "completed" (a search trial the budget cut short is still the best model that trial made)."""
    if stopped_by == "pruned":
        return "pruned"
    if stopped_by is not None and seed_check_run:
        return "stopped"
    return "completed"


def _best_after_check(trials: list[TrialRecord]) -> TrialRecord | None:
    """The best run of the recipe with the best mean over seeds (or their soup); without a seed check, the best
    search trial."""
    row = best_trial([t.row() for t in trials])
    return next(t for t in trials if t.number == row["number"]) if row else None


def _cached_head(recipe: Recipe) -> bool:
    """A recipe that trains a head on cached vectors of a frozen encoder or body: seconds to train, so cheap
    to cross-validate."""
    return recipe.trainable_layers == 0 and recipe.contrastive == 0 and recipe.augment == 0 and recipe.mixup == 0


def _best(trials: list[TrialRecord]) -> TrialRecord | None:
    best = best_outcome([t.outcome() for t in trials])
    return None if best is None else next(t for t in trials if t.number == best.number)


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
                             seconds=row["seconds"] or 0.0, parent=row.get("parent"),
                             no_effect=row.get("no_effect") or "")
        if row.get("predictions") is not None:
            record.predictions = np.asarray(row["predictions"])
        if row["diagnosis"]:
            record.diagnosis = Diagnosis(row["diagnosis"], row["evidence"], row["diagnosis_summary"] or "",
                                         row["diagnosis_summary"] or "")
        if row["run_id"]:
            record.history = store.epochs(row["run_id"])
        if row["status"] == "interrupted" and is_search(row) and recipe_not_finished(recipe, rows):
            retries.append((recipe, row["number"]))
        trials.append(record)
    return trials, retries


def recipe_not_finished(recipe: Recipe, rows: list[dict[str, Any]]) -> bool:
    return not any(r["status"] in ("completed", "pruned", "stopped", "failed") and r["recipe"] == recipe.to_dict()
                   for r in rows)
