"""Strategies propose the next recipe of a study. Every trial is an Optuna trial (asked from the study,
told its result), so pruning and the stored search state work the same for all of them.

- ``guided``: ours. Starts from the cheapest capacity (a head on the frozen encoder) and asks the policy
  what to change, reading the diagnosis of the best trial so far.
- ``grid``, ``random``, ``bayes`` (TPE): Optuna's samplers over ``space.SAMPLED_SPACE`` / ``space.GRID``
  (each task family has its own: tables, images on a pretrained body, a small CNN from scratch).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Protocol

import optuna

from tuneloop.config import Recipe
from tuneloop.tuning.diagnose import Diagnosis
from tuneloop.tuning.policy import next_recipe, recipe_key
from tuneloop.tuning.space import GRIDS, SPACES, params_of, recipe_from_params

STRATEGIES = ("guided", "grid", "random", "bayes")
MAX_REDRAWS = 20  # samples drawn before a sampler that only proposes tried recipes counts as exhausted
RECIPE_ATTR = "tuneloop_recipe"


@dataclass(frozen=True)
class Proposal:
    trial: optuna.trial.Trial
    recipe: Recipe
    reason: str


@dataclass(frozen=True)
class TrialOutcome:
    """What a strategy may read of a finished trial."""

    recipe: Recipe
    status: str  # completed, pruned, failed
    value: float | None
    diagnosis: Diagnosis | None


class Strategy(Protocol):
    name: str

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler: ...

    def propose(self, study: optuna.Study, base: Recipe, history: list[TrialOutcome],
                retry: Recipe | None) -> Proposal | None:
        """The next trial, or None when this strategy has nothing left to try. ``retry`` is a recipe whose
        trial was interrupted and must run again."""
        ...


def _ask_fixed(study: optuna.Study, recipe: Recipe, reason: str) -> Proposal:
    trial = study.ask()
    trial.set_user_attr(RECIPE_ATTR, recipe.to_dict())
    return Proposal(trial, recipe, reason)


class GuidedStrategy:
    name = "guided"

    def __init__(self, num_layers: int | None, modality: str = "text"):
        self.num_layers, self.modality = num_layers, modality
        self.first_learning_rate = 2e-3  # a head's usual rate; the study driver's caller may set it from lr-find
        self.first_note = ""

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=seed)  # never asked to sample: every trial is fixed

    def first_recipe(self, base: Recipe) -> Recipe:
        """The cheapest capacity first: the head alone on the frozen encoder (or image body), at a head's
        learning rate; for a table, a small MLP (one layer of 64 units); for the small CNN, two stages of
        up to 64 channels."""
        if self.modality == "tabular":
            return base.replace(hidden_layers=1, hidden_units=64, learning_rate=self.first_learning_rate,
                                epochs=max(base.epochs, 30), patience=max(base.patience, 5))
        if self.modality == "image-scratch":
            return base.replace(hidden_layers=2, hidden_units=64, learning_rate=self.first_learning_rate,
                                epochs=max(base.epochs, 30), patience=max(base.patience, 5))
        return base.replace(trainable_layers=0, learning_rate=self.first_learning_rate, epochs=max(base.epochs, 5))

    def first_reason(self) -> str:
        if self.modality == "tabular":
            return "start with the cheapest capacity: an MLP of one layer of 64 units" + self.first_note
        if self.modality == "image-scratch":
            return "start with the cheapest capacity: a CNN of two stages, 32 and 64 channels" + self.first_note
        body = "image body" if self.modality == "image" else "encoder"
        return f"start with the cheapest capacity: the head alone on the frozen {body}" + self.first_note

    def propose(self, study, base, history, retry):
        if retry is not None:
            return _ask_fixed(study, retry, "re-run of an interrupted trial")
        if not history:
            return _ask_fixed(study, self.first_recipe(base), self.first_reason())
        scored = [t for t in history if t.status == "completed" and t.value is not None]
        if not scored:  # every trial so far failed: calm the first recipe down
            last = history[-1]
            if last.diagnosis is None:
                return None
            decision = next_recipe(last.diagnosis, last.recipe, [t.recipe for t in history],
                                   num_layers=self.num_layers, modality=self.modality)
        else:
            best = max(scored, key=lambda t: t.value)
            decision = next_recipe(best.diagnosis, best.recipe, [t.recipe for t in history],
                                   num_layers=self.num_layers, modality=self.modality)
        if decision is None:
            return None
        return _ask_fixed(study, decision.recipe, decision.reason)


class SamplerStrategy:
    """Optuna's random or TPE sampler over the search space, or every combination of the grid in order.

    The grid is walked by queueing each untried combination (Optuna's GridSampler stops the study from
    inside ``tell``, which only works under ``study.optimize``, not in an ask/tell loop the caller owns).
    """

    def __init__(self, name: str, modality: str = "text"):
        self.name, self.modality = name, modality

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        if self.name == "bayes":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
        return optuna.samplers.RandomSampler(seed=seed)

    def grid(self) -> dict[str, list[Any]]:
        return GRIDS[self.modality]

    def space(self) -> dict[str, Any]:
        if self.name == "grid":
            return {name: optuna.distributions.CategoricalDistribution(values) for name, values in self.grid().items()}
        return SPACES[self.modality]

    def propose(self, study, base, history, retry):
        space = self.space()
        reason = f"{self.name} sample"
        if retry is not None:
            study.enqueue_trial({k: v for k, v in params_of(retry, self.modality).items() if k in space})
            reason = "re-run of an interrupted trial"
        elif self.name == "grid":
            tried = {recipe_key(t.recipe) for t in history}
            points = grid_points(self.grid())
            untried = [params for params in points
                       if recipe_key(recipe_from_params(base, params, self.modality)) not in tried]
            if not untried:
                return None
            study.enqueue_trial(untried[0])
            reason = f"grid point {len(points) - len(untried) + 1} of {len(points)}"
        tried = {recipe_key(t.recipe) for t in history}
        for _ in range(MAX_REDRAWS):
            trial = study.ask(space)
            recipe = recipe_from_params(base, trial.params, self.modality)
            if retry is not None or recipe_key(recipe) not in tried:
                trial.set_user_attr(RECIPE_ATTR, recipe.to_dict())
                return Proposal(trial, recipe, reason)
            trial.set_user_attr("tuneloop_skipped", "a recipe already run")  # never train the same recipe twice
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None


def grid_points(grid: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    grid = GRIDS["text"] if grid is None else grid
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]


def make_strategy(name: str, num_layers: int | None, modality: str = "text") -> Strategy:
    if name == "guided":
        return GuidedStrategy(num_layers, modality)
    if name in STRATEGIES:
        return SamplerStrategy(name, modality)
    raise ValueError(f"The 'strategy' parameter must be one of {', '.join(STRATEGIES)}. Got {name!r} instead.")


PRUNERS = ("median", "asha", "none")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """Steps are percent of a trial's schedule (see study._ReportToOptuna): the median pruner waits for 30%
    of it, and successive halving's rungs sit at 10%, 30% and 90%."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=30)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=10, reduction_factor=3)
    return optuna.pruners.NopPruner()
