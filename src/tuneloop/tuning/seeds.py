"""The seed check, as pure functions over stored trial rows: whether it can change the answer (which recipes
to re-run, or why not), which recipes were re-run with other seeds, their mean and 95% interval over seeds,
whether the leader's lead is larger than seed noise, and which trial is therefore the best: the winning
recipe's runs combined (a soup: their weight average, or their averaged predictions) where that scores at least
their mean. Where the check cannot change the answer, the lead's recipe alone may be re-run to be combined so
(a single group). The study driver and the report both read these, so they cannot disagree.

A trial row is a dict with ``number``, ``reason``, ``status``, ``value`` and ``recipe`` (a dict), as
``Workspace.trials`` returns it; ``no_effect`` and ``evidence`` are read where present.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuneloop.tuning.noise import Difference

SEED_CHECK_PREFIX = "seed check"
SOUP_PREFIX = "soup"
CROSS_VALIDATION_PREFIX = "cross-validation"  # a recipe scored by k-fold cross-validation: no model of its own
REFIT_PREFIX = "refit"  # the chosen recipe trained on every labelled example: the study's final model
ENSEMBLE_PREFIX = "ensemble"  # final fits of recipes within noise of each other, predicting together
# Two-sided 95% Student t quantiles by degrees of freedom, for the seed check's interval of the mean.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t95(df: int) -> float:
    """Two-sided 95% Student t quantile for ``df`` degrees of freedom (1.96 beyond the table)."""
    return T_975[df - 1] if 1 <= df <= len(T_975) else 1.96


def scored(trial: dict[str, Any]) -> bool:
    return trial["status"] == "completed" and trial["value"] is not None


def is_seed_check(trial: dict[str, Any]) -> bool:
    return trial["reason"].startswith(SEED_CHECK_PREFIX)


def is_soup(trial: dict[str, Any]) -> bool:
    return trial["reason"].startswith(SOUP_PREFIX)


FINAL_PREFIXES = (SEED_CHECK_PREFIX, SOUP_PREFIX, CROSS_VALIDATION_PREFIX, REFIT_PREFIX, ENSEMBLE_PREFIX)


def kind_of(trial: dict[str, Any]) -> str:
    """What a trial was for: "search", "seed check", "soup", "cross-validation", "refit" or "ensemble"."""
    for prefix in FINAL_PREFIXES:
        if trial["reason"].startswith(prefix):
            return prefix
    return "search"


def is_search(trial: dict[str, Any]) -> bool:
    """A trial the search proposed (not a seed-check re-run, a soup, a cross-validation, a refit or an ensemble
    after it)."""
    return not trial["reason"].startswith(FINAL_PREFIXES)


def cross_validated_values(trials: list[dict[str, Any]]) -> dict[int, float]:
    """Search trial number -> the value of its recipe by cross-validation, where it was cross-validated."""
    return {t["evidence"]["of_trial"]: t["value"] for t in trials
            if t["reason"].startswith(CROSS_VALIDATION_PREFIX) and scored(t) and "of_trial" in (t["evidence"] or {})}


def seed_check_plan(trials: list[dict[str, Any]],
                    paired: Callable[[int, int], Difference | None] | None = None) -> tuple[list[int], str]:
    """The search trials whose recipes a seed check re-runs (the top two distinct models), or none and why.

    It can change the answer only where the top two are within validation noise of each other and really are
    two models: a trial whose predictions repeat an earlier one's (no effect) is the earlier one again. The
    noise is the paired interval of their difference in the chosen metric (``paired``: trial numbers -> a
    ``noise.Difference``, or None where it cannot be measured); else the half-width of the leader's accuracy
    interval; a regressor has neither, so the check always can."""
    ranked = sorted((t for t in trials if is_search(t) and scored(t) and not t.get("no_effect")),
                    key=lambda t: t["value"], reverse=True)
    top: list[dict[str, Any]] = []
    for trial in ranked:
        if all(recipe_without_seed(trial["recipe"]) != recipe_without_seed(t["recipe"]) for t in top):
            top.append(trial)
        if len(top) == 2:
            break
    if len(top) < 2:
        return [], "only one distinct model completed: there is nothing to compare it with"
    first, second = top
    lead = first["value"] - second["value"]
    difference = paired(first["number"], second["number"]) if paired is not None else None
    if difference is not None:
        if difference.beyond_noise:
            return [], (f"trial {first['number']} leads trial {second['number']} by {lead:.4f}, more than validation "
                        f"noise ({difference.sentence()}): other seeds would not change the answer")
        return [first["number"], second["number"]], ""
    noise = (first.get("evidence") or {}).get("ci_half_width")
    if noise is not None and lead > noise:
        return [], (f"trial {first['number']} leads trial {second['number']} by {lead:.4f}, more than validation "
                    f"noise (±{noise:.4f}): other seeds would not change the answer")
    return [first["number"], second["number"]], ""


def seed_check_reserve(one_each: float, seeds: int, share: float) -> float:
    """Seconds the search leaves for the seed check, whose re-runs take ``one_each`` a seed (the planned recipes
    once each): ``seeds`` of them, at most ``share``; nothing where not even one each fits in ``share`` (the
    check will not run, and time held for it would go unused: 20 Newsgroups at 1,000 examples held 90 s of 374
    for re-runs of 247 s)."""
    return min(seeds * one_each, share) if one_each <= share else 0.0


@dataclass(frozen=True)
class SeedGroup:
    """One recipe run with several seeds: its original trial, every trial of it, and their values."""

    original: int  # number of the search trial whose recipe was re-run
    trials: list[dict[str, Any]]
    values: list[float]  # of the completed ones

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def sd(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    @property
    def half_width(self) -> float | None:
        """Of the 95% Student-t interval of the mean; None for a single value, which has no interval."""
        n = len(self.values)
        return t95(n - 1) * self.sd / math.sqrt(n) if n > 1 else None


def seed_groups(trials: list[dict[str, Any]]) -> list[SeedGroup]:
    """The recipes the seed check re-ran, in the order it re-ran them, each with all its trials."""
    keys = list(dict.fromkeys(recipe_without_seed(t["recipe"]) for t in trials if is_seed_check(t)))
    groups = []
    for key in keys:
        members = [t for t in trials if recipe_without_seed(t["recipe"]) == key and not is_soup(t)]
        original = next((t for t in members if not is_seed_check(t)), members[0])
        groups.append(SeedGroup(original["number"], members, [t["value"] for t in members if scored(t)]))
    return groups


def seed_verdict(groups: list[SeedGroup]) -> str:
    """Is the leading recipe's lead over the runner-up larger than seed noise? As the study driver weighs it:
    the gap of the means against the 95% t half-width of their difference; but a recipe with a single
    completed run says nothing about noise, and the verdict says so rather than calling any lead real."""
    measured = [g for g in groups if g.values]
    if len(measured) == 1 and len(measured[0].values) > 1:  # more draws of one recipe, to combine
        only = measured[0]
        return (f"the recipe of trial {only.original} ran with {len(only.values)} seeds: {only.mean:.4f} "
                f"±{only.half_width:.4f} over seeds")
    if len(measured) < 2:
        return "only one recipe completed: nothing to compare it with"
    first, second = sorted(measured, key=lambda g: g.mean, reverse=True)[:2]
    lead = first.mean - second.mean
    n1, n2 = len(first.values), len(second.values)
    if min(n1, n2) < 2:  # one value has no spread: the noise is unknown, not zero
        thin = first if n1 < 2 else second
        return (f"the recipe of trial {first.original} leads by {lead:.4f}, but seed noise is unknown: the recipe "
                f"of trial {thin.original} has a single completed run (its re-runs were pruned or failed)")
    noise = t95(max(1, n1 + n2 - 2)) * math.sqrt(first.sd ** 2 / n1 + second.sd ** 2 / n2)
    if lead > noise:
        return (f"the recipe of trial {first.original} leads by {lead:.4f} over seeds, more than seed noise "
                f"(±{noise:.4f})")
    return (f"the recipe of trial {first.original} leads by {lead:.4f}, within seed noise (±{noise:.4f}): "
            f"trials {first.original} and {second.original} are equally good")


def winning_group(trials: list[dict[str, Any]]) -> SeedGroup | None:
    """After a seed check, the group of the recipe with the best mean over seeds: of two or more recipes, or
    of the one recipe whose runs were drawn again to be combined (where it completed more than once)."""
    groups = [g for g in seed_groups(trials) if g.values]
    if len(groups) == 1:
        return groups[0] if len(groups[0].values) > 1 else None
    return max(groups, key=lambda g: g.mean) if groups else None


def best_trial(trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best trial as the study driver picks it: the final fits of recipes within noise of each other
    predicting together (an ensemble) where there is one, else the chosen recipe trained on every labelled
    example (a refit) where there is one; after a seed check of two or more recipes, the best run of the recipe with the
    best mean over seeds, or the weight average of its runs (a soup) where that scores at least their mean;
    otherwise the completed search trial with the highest objective (the first on ties), a cross-validated
    recipe counting by its cross-validation value.

    A soup is measured against the mean of its runs, not against the best of them: the best run's score is
    the highest of several draws of validation noise, and overstates that run by as much."""
    for prefix in (ENSEMBLE_PREFIX, REFIT_PREFIX):
        final = [t for t in trials if t["reason"].startswith(prefix) and scored(t)]
        if final:
            return final[-1] if prefix == ENSEMBLE_PREFIX else final[0]
    winner = winning_group(trials)
    if winner is not None:
        soups = [t for t in trials if is_soup(t) and scored(t)
                 and recipe_without_seed(t["recipe"]) == recipe_without_seed(winner.trials[0]["recipe"])]
        if soups and soups[-1]["value"] >= winner.mean:
            return soups[-1]
        trials = winner.trials
    by_cross_validation = cross_validated_values(trials)
    candidates = [t for t in trials if scored(t) and is_search(t) or is_seed_check(t) and scored(t)]
    return (max(candidates, key=lambda t: by_cross_validation.get(t["number"], t["value"]))
            if candidates else None)


def combined_in_words(best: dict[str, Any]) -> str:
    """What ``best_trial`` handed back after a seed check, in words: the runs' combination, or the best run."""
    if is_soup(best):
        by = (best.get("evidence") or {}).get("combined_by", "weight average")
        return (f"trial {best['number']}, the {by} of the recipe's runs ({best['value']:.4f} on validation, at "
                f"least their mean)")
    return f"trial {best['number']}'s own model, the best run of the recipe with the best mean over seeds"


def recipe_without_seed(recipe: dict[str, Any]) -> str:
    """Two trials with the same key ran the same experiment with possibly different seeds."""
    return json.dumps({k: v for k, v in recipe.items() if k not in ("seed", "init_seed")}, sort_keys=True)


