"""Choosing the final model where validation is too small to tell recipes apart: which recipes are still in the
running, the folds of cross-validation over every labelled example, and the interval the choice rests on.

A validation set of 26 examples gives an accuracy of 0.80 an interval of +-0.15: two recipes a few points apart
cannot be told apart on it, and the 26 examples are a fifth of the data kept out of the model. So where the
best trial's interval is wider than the differences the search resolves (``NOISY_HALF_WIDTH``), the study ends
by scoring the recipes still in the running by k-fold cross-validation over the training and validation
examples together, where that is affordable (a head on cached vectors costs seconds), and training the chosen
recipe on all of them. Pure functions; the study driver runs what they choose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuneloop.tuning.diagnose import DEFAULT_THRESHOLDS, accuracy_interval
from tuneloop.tuning.seeds import is_search, scored

NOISY_HALF_WIDTH = DEFAULT_THRESHOLDS.ci_half_width  # wider than this: validation cannot resolve a move's gain
SMALL_REGRESSION_VAL = 300  # a regressor's validation set below this many rows is small (it has no interval)
MAX_FOLDS = 5
MAX_CANDIDATES = 4
MAX_MEMBERS = 3  # of an ensemble of final fits
FINAL_SHARE = 0.5  # of a time budget, the most the final choice on every example (folds, a final fit) may take
RESERVE_MARGIN, RESERVE_SECONDS = 1.25, 2.0  # the time kept for final fits: their estimate x 1.25, + 2 s


def approach(recipe: dict[str, Any]) -> tuple[Any, ...]:
    """What a recipe trains, apart from its finer knobs: the trainable depth, pairs or not, adapters or not,
    the network's size (tables, small CNNs). Within validation noise the choice is between approaches: two
    weight decays of one head are not worth folds each."""
    return (recipe.get("trainable_layers"), recipe.get("contrastive", 0) > 0, recipe.get("lora_rank", 0) > 0,
            recipe.get("hidden_layers"), recipe.get("hidden_units"))


def validation_is_small(best: dict[str, Any] | None, n_val: int, regression: bool) -> bool:
    """Whether the best search trial's validation interval is too wide to choose by (or, for a regressor,
    whether its validation set is smaller than SMALL_REGRESSION_VAL)."""
    if regression:
        return n_val < SMALL_REGRESSION_VAL
    if best is None:
        return False
    half = (best.get("evidence") or {}).get("ci_half_width")
    return half is not None and half > NOISY_HALF_WIDTH


def candidates(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best search trial of each approach (``approach``) within the best one's validation noise of it, best
    first (at most MAX_CANDIDATES); a trial that repeats another's predictions is that other one."""
    ranked = sorted((t for t in trials if is_search(t) and scored(t) and not t.get("no_effect")),
                    key=lambda t: t["value"], reverse=True)
    if not ranked:
        return []
    chosen: list[dict[str, Any]] = []
    for trial in ranked:
        if not within_leaders_noise(trial, ranked[0]):
            continue
        if all(approach(trial["recipe"]) != approach(t["recipe"]) for t in chosen):
            chosen.append(trial)
        if len(chosen) == MAX_CANDIDATES:
            break
    return chosen


def within_leaders_noise(trial: dict[str, Any], lead: dict[str, Any]) -> bool:
    """Whether the validation set cannot tell ``trial`` from the leader: their accuracy intervals overlap, where
    both have one, as the final choice judges (``Estimate.within_noise_of``). On a few validation examples the
    leader's own interval is narrow near 1.0 and its score the luckiest of several trials, so its half-width
    alone would drop a recipe it does not beat by more than noise (R8, 16 per class: a whole fine-tune 0.957
    on 24 examples, the head 0.829; the head cross-validated scores higher on the test set). Without intervals
    (a regressor): no further below the leader than its half-width."""
    mine, its = holdout_estimate(trial), holdout_estimate(lead)
    if None not in (mine.low, mine.high, its.low, its.high):
        return mine.within_noise_of(its)
    return lead["value"] - trial["value"] <= ((lead.get("evidence") or {}).get("ci_half_width") or 0.0)


def folds(labels: Sequence[Any], k: int, seed: int, regression: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold splits of examples labelled ``labels`` (class names; a regressor's values are split
    by rank): each example is validated in exactly one fold. Empty where a fold would be empty."""
    labels = list(labels)
    n = len(labels)
    if k < 2 or n < 2 * k:
        return []
    rng = np.random.default_rng(seed)
    assignment = np.empty(n, dtype=np.int64)
    if regression:  # neighbours by value go to different folds
        order = np.argsort(np.asarray(labels, dtype=np.float64), kind="stable")
        groups = [order[i:i + k] for i in range(0, n, k)]
    else:
        names = np.asarray([str(y) for y in labels])
        groups = [np.flatnonzero(names == name) for name in sorted(set(names))]
    offset = 0
    for members in groups:  # deal each group's shuffled members round the folds, continuing where it ended
        members = rng.permutation(members)
        assignment[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)
    return [(np.flatnonzero(assignment != f), np.flatnonzero(assignment == f)) for f in range(k)]


def fold_count(labels: Sequence[Any], regression: bool) -> int:
    """As many folds as MAX_FOLDS, and no more than the rarest class has examples (each fold validates some)."""
    if regression:
        return MAX_FOLDS
    _, counts = np.unique(np.asarray([str(y) for y in labels]), return_counts=True)
    return int(min(MAX_FOLDS, counts.min())) if len(counts) else 0


@dataclass(frozen=True)
class Estimate:
    """How good a recipe is expected to be, and on what: a value (higher is better), the accuracy interval
    where there is one, and in words."""

    value: float
    low: float | None
    high: float | None
    by: str  # "5-fold cross-validation over 128 examples", "the validation set (26 examples)"

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2 if self.low is not None and self.high is not None else 0.0

    def within_noise_of(self, other: Estimate) -> bool:
        """Whether the data cannot tell this estimate from ``other``: their accuracy intervals overlap, where
        both have one (the values themselves may be another metric, e.g. macro-F1, which on a few examples
        per class moves in steps larger than accuracy's); else this one is below ``other`` by no more than the
        wider half-width (an error metric's: none, so only an equal value)."""
        if None not in (self.low, self.high, other.low, other.high):
            return self.low <= other.high and other.low <= self.high
        return other.value - self.value <= max(self.half_width, other.half_width)

    def sentence(self, metric: str) -> str:
        interval = f" (accuracy 95% interval {self.low:.3f} to {self.high:.3f})" if self.low is not None else ""
        return f"{metric} {abs(self.value):.4f} by {self.by}{interval}"


def choose(estimates: dict[int, Estimate], favoured: set[int], over: set[int] | None = None) -> int:
    """The trial with the highest estimate, unless that is one of ``over`` and a ``favoured`` one is within noise
    of it (the wider of the two intervals' half-widths): then the favoured one with the highest estimate.

    Favoured are recipes that do what the ones they are favoured over do, and more, where the validation at
    hand is too small to show the difference: contrastive tuning on pairs, then a head, over a head on the
    untuned encoder (SetFit's gain over a frozen encoder's head is large at few examples per class,
    arXiv:2209.11055). Only a difference larger than the noise overrules that. Against other approaches (a
    whole fine-tune) the higher estimate wins: earlier evidence does not say which wins on this data."""
    top = max(estimates, key=lambda n: estimates[n].value)
    if over is not None and top not in over:
        return top
    tied = [n for n in favoured if n in estimates and estimates[n].within_noise_of(estimates[top])]
    return max(tied, key=lambda n: estimates[n].value) if tied else top


def ensemble_members(estimates: dict[int, Estimate], lead: int, most: int = MAX_MEMBERS) -> list[int]:
    """The trials whose final fits predict together: the ``lead`` (the one ``choose`` picked) and, best first,
    the others whose estimates are within noise of its (at most ``most`` in all). Recipes the data cannot tell
    apart make errors on different examples: their average is rarely worse than either, often better."""
    others = sorted((n for n in estimates if n != lead and estimates[n].within_noise_of(estimates[lead])),
                    key=lambda n: estimates[n].value, reverse=True)
    return [lead, *others][:most]


def final_reserve(needs: Sequence[Sequence[float]], cap: float) -> float:
    """Seconds the search leaves for the final choice on every example. ``needs`` holds, for each recipe in the
    running (the lead first), the seconds its final choice takes, best first (its folds and its final fit at its
    own epochs; then at its best epoch); each recipe counts the first of them that fits in ``cap`` with those
    already counted, one that none fits counts nothing (else the search would stop early and the time go
    unused). What is held is that total with a margin (the search ends after its deadline: a trial's last step
    and its saving), at most ``cap``; nothing where nothing fits."""
    cost = 0.0
    for seconds in needs:
        need = next((s for s in seconds if cost + s + RESERVE_SECONDS <= cap), None)
        if need is not None:
            cost += need
    return min(cost * RESERVE_MARGIN + RESERVE_SECONDS, cap) if cost else 0.0


def fit_seconds(trial_seconds: float, epoch_seconds: Sequence[float], epochs: int, scale: float = 1.0) -> float:
    """Seconds a fit of a trial's recipe takes for ``epochs`` epochs over ``scale`` times the trial's training
    examples, from the trial's own times: its fixed part (loading the model, caching vectors, tuning on pairs:
    whatever its epochs did not take) once, plus its mean epoch (training and validation) per epoch, scaled.
    A trial that stopped early says as much about an epoch as one that ran them all."""
    trained = float(sum(epoch_seconds))
    if not epoch_seconds:
        return trial_seconds * scale
    fixed = max(0.0, trial_seconds - trained)
    return fixed + trained / len(epoch_seconds) * epochs * scale


def pooled_estimate(value: float, accuracy: float | None, n: int, k: int) -> Estimate:
    """The estimate of a k-fold cross-validation in which each of ``n`` examples was predicted once: its
    accuracy's Wilson interval is over all ``n``."""
    low, high = accuracy_interval(accuracy, n) if accuracy is not None else (None, None)
    return Estimate(value, low, high, f"{k}-fold cross-validation over {n} examples")


def holdout_estimate(trial: dict[str, Any]) -> Estimate:
    evidence = trial.get("evidence") or {}
    n = evidence.get("n_val")
    return Estimate(trial["value"], evidence.get("ci_low"), evidence.get("ci_high"),
                    f"trial {trial['number']}'s validation set ({n} examples)" if n
                    else f"trial {trial['number']}'s validation set")
