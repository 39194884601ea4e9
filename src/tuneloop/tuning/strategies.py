"""Strategies propose the next recipe of a study. Every trial is an Optuna trial (asked from the study,
told its result), so pruning and the stored search state work the same for all of them.

- ``guided``: ours. Starts from the cheapest capacity (a head on the frozen encoder) and asks the policy
  what to change, reading the diagnosis of the best trial so far; once it stops gaining, the larger moves it
  has not tried (its family's ``explore``). It stops on a plateau of ``plateau`` trials without a gain.
- ``grid``, ``random``, ``bayes`` (TPE): Optuna's samplers over the family's space or grid (each task's
  family has its own: a pretrained encoder, tables, images on a pretrained body, a small CNN from scratch).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import optuna

from tuneloop.config import Recipe
from tuneloop.tuning.diagnose import Diagnosis
from tuneloop.tuning.family import Family
from tuneloop.tuning.policy import (
    FEW_PER_CLASS,
    Decision,
    explore,
    next_recipe,
    recipe_key,
    untried,
)
from tuneloop.tuning.space import params_of, recipe_from_params

SHOWN_PASSED_OVER = 3  # moves a stop reason names; the rest are counted
STRATEGIES = ("guided", "grid", "random", "bayes")
GUIDED_PLATEAU = 4  # trials without a gain beyond noise after which the guided search explores, then stops
PAIRS_SHARE = 0.5  # of the search's time left, the most a trial's contrastive tuning may take
MAX_REDRAWS = 20  # samples drawn before a sampler that only proposes tried recipes counts as exhausted
RECIPE_ATTR = "tuneloop_recipe"
# A training step costs this many reads of a text for inference per text (forward and backward): 2.6x, 3.3x
# and 3.3x measured for a whole fine-tune of MiniLM on R8, election tweets and 20 Newsgroups (2-core AMD EPYC).
TRAIN_COST = 3.0
MIN_SIZED_EPOCHS = 2  # a move cut down to the time left keeps at least this many epochs, or is not tried
MAX_SKIPPED = 12  # moves passed over for their cost before a proposal gives up


@dataclass(frozen=True)
class Proposal:
    trial: optuna.trial.Trial
    recipe: Recipe
    reason: str
    parent: int | None = None  # the trial whose recipe this one changes


@dataclass(frozen=True)
class TrialOutcome:
    """What a strategy may read of a finished trial."""

    recipe: Recipe
    status: str  # completed, pruned, failed; running while it trains in an executor
    value: float | None
    diagnosis: Diagnosis | None
    number: int = -1
    parent: int | None = None
    no_effect: bool = False  # its validation predictions repeat an earlier trial's
    # Whether this trial leads trial N by more than validation noise, measured on the pair (the study driver's
    # paired interval of the difference); None where that cannot be measured. Not part of equality.
    leads: Callable[[int], bool | None] | None = field(default=None, compare=False, repr=False)

    @property
    def noise(self) -> float:
        """How much a better trial must beat this one by to count: the half-width of its accuracy interval."""
        return float(self.diagnosis.evidence.get("ci_half_width", 0.0)) if self.diagnosis else 0.0

    def gains_over(self, best: TrialOutcome) -> bool:
        """Whether this trial beats ``best`` by more than validation noise: by the paired interval of their
        difference where measured, else by more than ``best``'s accuracy half-width."""
        measured = self.leads(best.number) if self.leads is not None else None
        if measured is not None:
            return measured and self.value > best.value
        return self.value - best.value > best.noise


def best_outcome(history: Sequence[TrialOutcome]) -> TrialOutcome | None:
    """The completed trial with the highest value (the first on ties)."""
    scored = [t for t in history if t.status == "completed" and t.value is not None]
    return max(scored, key=lambda t: t.value) if scored else None


def trials_since_gain(history: Sequence[TrialOutcome]) -> int:
    """Trials since the last one that beat the best before it by more than validation noise (``gains_over``).

    A trial that changed no prediction (no effect) answered no question, and one still training has not
    answered yet: they count neither way."""
    best: TrialOutcome | None = None
    since = 0
    for trial in history:
        if trial.no_effect or trial.status == "running":
            continue
        scored = trial.status == "completed" and trial.value is not None
        if scored and (best is None or trial.gains_over(best)):
            since = 0
        else:
            since += 1
        if scored and (best is None or trial.value > best.value):
            best = trial
    return since


class Strategy(Protocol):
    name: str
    plateau: int  # trials without a gain beyond noise that end the study (0: never)

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler: ...

    def propose(self, study: optuna.Study, base: Recipe, history: list[TrialOutcome],
                retry: Recipe | None, seconds_left: float | None = None) -> Proposal | None:
        """The next trial, or None when this strategy has nothing left to try. ``retry`` is a recipe whose
        trial was interrupted and must run again; ``seconds_left`` is the search's time left (None: no time
        limit), which moves whose cost depends on their size are sized to."""
        ...

    def untried(self, history: list[TrialOutcome]) -> list[str]:
        """Moves with an expected gain this strategy has not tried yet, in words (why not to stop yet)."""
        ...

    def done_reason(self) -> str:
        """Why ``propose`` returned None, in words (the study's stop reason)."""
        ...


@dataclass(frozen=True)
class TrialCost:
    """A trial's estimated seconds: ``once`` (contrastive tuning, reading frozen layers once) and per epoch."""

    once: float
    per_epoch: float

    def seconds(self, epochs: int) -> float:
        return self.once + self.per_epoch * epochs

    def epochs_within(self, seconds: float) -> int:
        """The most epochs that fit in ``seconds`` (0: not even one)."""
        if self.per_epoch <= 0:
            return 10**6
        return max(0, math.floor((seconds - self.once) / self.per_epoch))


@dataclass(frozen=True)
class DataFacts:
    """What the guided policy sizes its moves by: the backbone's depth, the training and validation examples,
    the smallest class's examples (None where unknown or not a classifier), what a pair of contrastive tuning
    costs and what reading one training example through the whole frozen backbone costs (seconds, measured on
    first use; None where unknown)."""

    num_layers: int | None = None
    train_size: int | None = None
    examples_per_class: int | None = None
    pair_seconds: Callable[[], float] | None = None
    val_size: int | None = None
    example_seconds: Callable[[], float] | None = None

    def trial_cost(self, recipe: Recipe) -> TrialCost | None:
        """What a trial of ``recipe`` should take, from what reading an example costs: each epoch trains the
        trainable share of the backbone on every training example (TRAIN_COST reads) and reads every
        validation example through it; the frozen share's outputs are read once and cached (every epoch where
        augmentation changes the inputs); contrastive tuning comes first. A head on cached vectors costs
        nothing worth counting. None where no cost is known."""
        if self.example_seconds is None or not self.train_size:
            return None
        pairs = (recipe.contrastive * self.train_size * self.pair_seconds()
                 if recipe.contrastive > 0 and self.pair_seconds is not None else 0.0)
        share = self._trainable_share(recipe)
        if share == 0 and recipe.contrastive == 0 and recipe.augment == 0:
            return TrialCost(0.0, 0.0)
        read = self.example_seconds()
        n, v = self.train_size, self.val_size or 0
        if recipe.augment > 0:  # nothing cached: the frozen share runs on every example every epoch
            return TrialCost(pairs, read * (n * (TRAIN_COST * share + 1 - share) + v))
        return TrialCost(pairs + read * (n + v) * (1 - share), read * share * (TRAIN_COST * n + v))

    def _trainable_share(self, recipe: Recipe) -> float:
        layers = recipe.trainable_layers
        if layers == "all":
            return 1.0
        if not layers:
            return 0.0
        return min(1.0, layers / self.num_layers) if self.num_layers else 1.0

    def policy_options(self, seconds_left: float | None = None) -> dict[str, Any]:
        return {"num_layers": self.num_layers, "train_size": self.train_size,
                "examples_per_class": self.examples_per_class, "pairs_affordable": self.pairs_affordable(seconds_left)}

    def pairs_affordable(self, seconds_left: float | None) -> int | None:
        """Pairs per training example whose contrastive tuning takes at most PAIRS_SHARE of ``seconds_left``
        (a trial's and, as long again, its fit on every example); None without a time limit or a cost."""
        if seconds_left is None or self.pair_seconds is None or not self.train_size:
            return None
        few = self.examples_per_class is not None and self.examples_per_class <= FEW_PER_CLASS
        if not few:  # the move does not apply: no need to measure what a pair costs
            return None
        return int(PAIRS_SHARE * max(0.0, seconds_left) / (self.pair_seconds() * self.train_size))


def _ask_fixed(study: optuna.Study, recipe: Recipe, reason: str, parent: int | None = None) -> Proposal:
    trial = study.ask()
    trial.set_user_attr(RECIPE_ATTR, recipe.to_dict())
    return Proposal(trial, recipe, reason, parent)


class GuidedStrategy:
    name = "guided"

    def __init__(self, num_layers: int | None, family: Family, facts: DataFacts | None = None,
                 plateau: int = GUIDED_PLATEAU):
        self.facts = facts or DataFacts(num_layers)
        self.num_layers, self.family, self.plateau = self.facts.num_layers, family, plateau
        self.first_learning_rate = 2e-3  # a head's usual rate; the study driver's caller may set it from lr-find
        self.first_note = ""
        self.passed_over: list[str] = []  # moves the last proposal passed over as too costly for the time left
        self.cut_from: list[Recipe] = []  # recipes of moves made with fewer epochs, to fit the time left

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=seed)  # never asked to sample: every trial is fixed

    def first_recipe(self, base: Recipe) -> Recipe:
        """The cheapest capacity first, as the family says (the head alone on a frozen encoder or image body, a
        small MLP, a small CNN), at the first learning rate (a head's usual, or the range test's)."""
        return self.family.first_recipe(base, self.first_learning_rate, self.facts.train_size)

    def first_reason(self) -> str:
        return self.family.first_reason + self.first_note

    def propose(self, study, base, history, retry, seconds_left=None):
        if retry is not None:
            return _ask_fixed(study, retry, "re-run of an interrupted trial")
        if not history:
            return _ask_fixed(study, self.first_recipe(base), self.first_reason())
        tried = [t.recipe for t in history]
        options = {**self.facts.policy_options(seconds_left), "family": self.family}
        best = best_outcome(history)
        if best is None:  # every trial so far failed: calm the first recipe down
            last = history[-1]
            if last.diagnosis is None:
                return None
            decision = next_recipe(last.diagnosis, last.recipe, tried, **options)
            return None if decision is None else _ask_fixed(study, decision.recipe, decision.reason, last.number)
        self.passed_over = []
        skipped: list[Recipe] = []
        for _ in range(MAX_SKIPPED):
            decision = self._decide(best, history, tried + self.cut_from + skipped, options)
            if decision is None:
                return None
            sized = self._sized(decision, seconds_left)
            if sized is not None:
                if sized.recipe != decision.recipe:  # the move is made: not again at its full length
                    self.cut_from.append(decision.recipe)
                return _ask_fixed(study, sized.recipe, sized.reason, best.number)
            skipped.append(decision.recipe)
        return None

    def _decide(self, best: TrialOutcome, history: list[TrialOutcome], tried: list[Recipe],
                options: dict[str, Any]) -> Decision | None:
        """The rule table's next move from the best trial (unless on a plateau), else a larger one not tried."""
        if not self._plateaued(history):
            ineffective = [t.recipe for t in history if t.no_effect and t.parent == best.number]
            decision = next_recipe(best.diagnosis, best.recipe, tried, ineffective=ineffective, **options)
            if decision is not None:
                return decision
        return explore(best.recipe, tried, **options)

    def _sized(self, decision: Decision, seconds_left: float | None) -> Decision | None:
        """``decision`` where its trial should end within ``seconds_left`` (the search's time left), with fewer
        epochs where that makes it fit (at least MIN_SIZED_EPOCHS); None where it cannot fit. A trial cut off
        by the deadline halfway through its schedule hands back a half-trained model and leaves no time for
        what comes after it."""
        cost = self.facts.trial_cost(decision.recipe)
        epochs = decision.recipe.epochs
        if seconds_left is None or cost is None or cost.seconds(epochs) <= seconds_left:
            return decision
        fitting = cost.epochs_within(seconds_left)
        if fitting >= MIN_SIZED_EPOCHS:
            return replace(decision, recipe=decision.recipe.replace(epochs=fitting),
                           reason=f"{decision.reason}; {fitting} of its {epochs} epochs (about "
                                  f"{cost.seconds(fitting):.0f}s), what the {seconds_left:.0f}s left allow")
        moved = ", ".join(f"{knob} {old} -> {new}" for knob, (old, new) in decision.changes.items())
        self.passed_over.append(f"{moved or decision.reason} (about {cost.seconds(MIN_SIZED_EPOCHS):.0f}s for "
                                f"{MIN_SIZED_EPOCHS} epochs, {seconds_left:.0f}s left)")
        return None

    def done_reason(self) -> str:
        """Why ``propose`` returned None."""
        if self.passed_over:
            shown = self.passed_over[:SHOWN_PASSED_OVER]
            more = len(self.passed_over) - len(shown)
            return ("nothing left to try fits in the search's time left; passed over: " + "; ".join(shown)
                    + (f"; and {more} more" if more else ""))
        return "the strategy has nothing left to try"

    def _plateaued(self, history: list[TrialOutcome]) -> bool:
        return bool(self.plateau) and trials_since_gain(history) >= self.plateau

    def untried(self, history: list[TrialOutcome]) -> list[str]:
        best = best_outcome(history)
        if best is None:
            return []
        return untried(best.recipe, [t.recipe for t in history], **self.facts.policy_options(),
                       family=self.family)


class SamplerStrategy:
    """Optuna's random or TPE sampler over the search space, or every combination of the grid in order.

    The grid is walked by queueing each untried combination (Optuna's GridSampler stops the study from
    inside ``tell``, which only works under ``study.optimize``, not in an ask/tell loop the caller owns).
    """

    def __init__(self, name: str, family: Family, plateau: int = 0):
        self.name, self.family, self.plateau = name, family, plateau

    def untried(self, history: list[TrialOutcome]) -> list[str]:
        return []  # a sampler has no notion of a move left untried: its plateau (if asked for) ends the study

    def done_reason(self) -> str:
        return "the strategy has nothing left to try"

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        if self.name == "bayes":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
        return optuna.samplers.RandomSampler(seed=seed)

    def grid(self) -> Mapping[str, Sequence[Any]]:
        return self.family.grid

    def space(self) -> dict[str, Any]:
        if self.name == "grid":
            return {name: optuna.distributions.CategoricalDistribution(values) for name, values in self.grid().items()}
        return dict(self.family.space)

    def propose(self, study, base, history, retry, seconds_left=None):
        space = self.space()
        reason = f"{self.name} sample"
        if retry is not None:
            study.enqueue_trial({k: v for k, v in params_of(retry, self.family).items() if k in space})
            reason = "re-run of an interrupted trial"
        elif self.name == "grid":
            tried = {recipe_key(t.recipe) for t in history}
            points = grid_points(self.grid())
            untried = [params for params in points
                       if recipe_key(recipe_from_params(base, params, self.family)) not in tried]
            if not untried:
                return None
            study.enqueue_trial(untried[0])
            reason = f"grid point {len(points) - len(untried) + 1} of {len(points)}"
        tried = {recipe_key(t.recipe) for t in history}
        for _ in range(MAX_REDRAWS):
            trial = study.ask(space)
            recipe = recipe_from_params(base, trial.params, self.family)
            if retry is not None or recipe_key(recipe) not in tried:
                trial.set_user_attr(RECIPE_ATTR, recipe.to_dict())
                return Proposal(trial, recipe, reason)
            trial.set_user_attr("tuneloop_skipped", "a recipe already run")  # never train the same recipe twice
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]


def make_strategy(name: str, num_layers: int | None, family: Family, facts: DataFacts | None = None,
                  plateau: int | None = None) -> Strategy:
    """``plateau``: trials without a gain beyond validation noise that end the study (0: never); None takes
    the strategy's own default (the guided search's GUIDED_PLATEAU; a sampler runs every trial asked for)."""
    if name == "guided":
        return GuidedStrategy(num_layers, family, facts, GUIDED_PLATEAU if plateau is None else plateau)
    if name in STRATEGIES:
        return SamplerStrategy(name, family, plateau or 0)
    raise ValueError(f"The 'strategy' parameter must be one of {', '.join(STRATEGIES)}. Got {name!r} instead.")


PRUNERS = ("median", "asha", "none")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """Steps are percent of a trial's schedule (see study.ReportToOptuna): the median pruner waits for 30%
    of it, and successive halving's rungs sit at 10%, 30% and 90%."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=30)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=10, reduction_factor=3)
    return optuna.pruners.NopPruner()
