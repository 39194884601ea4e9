"""The promotion gate: a pure decision on per-example scores. A candidate replaces the production version
only if both hold, on examples neither was tuned on:

1. on the new data's holdout it is better by more than noise: the lower end of the paired bootstrap
   confidence interval of (candidate - production), over the same examples, is above zero;
2. on the old holdout it is shown to lose at most ``tolerance`` (a non-inferiority test): the upper end of
   the confidence interval of the loss (production's mean score minus the candidate's) is within it. A point
   estimate within it is not enough: on 250 old examples a real 3-4 point loss often measures under 2. Where
   the holdout is too small for the tolerance to be shown at all, the check says how many examples it needs;
3. where a chance baseline is given, it beats that too on the new holdout, by more than noise: the best
   constant answer (the holdout's most common class, or its median value). Data with shuffled labels can
   teach a model nothing but the label shares, and its holdout is shuffled too: a candidate trained on it
   may well beat a production model that has never seen its classes, but not chance.

Scores are 1/0 correctness for a classifier (means are accuracies, the tolerance is in accuracy points) or
negative absolute errors for a regressor (the tolerance is then a share of production's mean absolute error).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tuneloop.continual.stats import paired_bootstrap

DEFAULT_TOLERANCE = 0.02
CONFIDENCE = 0.95


@dataclass(frozen=True)
class GateCheck:
    name: str  # "new data gain" or "old data kept"
    passed: bool
    summary: str  # one line, with the numbers
    numbers: dict[str, float]


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    checks: list[GateCheck]
    tolerance: float
    caveat: str = ""  # where the holdouts are not independent of the candidate: how the numbers lean

    @property
    def failed(self) -> list[GateCheck]:
        return [check for check in self.checks if not check.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "tolerance": self.tolerance, "checks": [asdict(c) for c in self.checks],
                "caveat": self.caveat}


def decide(new_candidate: np.ndarray, new_production: np.ndarray, old_candidate: np.ndarray,
           old_production: np.ndarray, *, tolerance: float = DEFAULT_TOLERANCE, regression: bool = False,
           seed: int = 0, new_chance: np.ndarray | None = None, error: str = "mean absolute error",
           naive: str = "always answering the median") -> GateDecision:
    """The gate's decision from each model's per-example scores on the new holdout and on the old one (and
    a naive answer's scores on the new holdout, ``new_chance``). A regressor's scores are negative errors:
    ``error`` names them and ``naive`` the answer that scored ``new_chance``."""
    what = error if regression else "accuracy"
    gain = paired_bootstrap(new_candidate, new_production, seed=seed, confidence=CONFIDENCE)
    beats_noise = bool(gain.low > 0)
    new_numbers = {"n": gain.n, "candidate": _shown(new_candidate, regression),
                   "production": _shown(new_production, regression), **_interval(gain.to_dict())}
    change = "lower by" if regression else "gain"
    new_check = GateCheck(
        "new data gain", beats_noise,
        f"new holdout ({gain.n} examples): {what} {new_numbers['candidate']:.4f} against production's "
        f"{new_numbers['production']:.4f}, {change} {gain.difference:+.4f} ({CONFIDENCE:.0%} CI {gain.low:+.4f} "
        f"to {gain.high:+.4f}): " + ("larger than noise" if beats_noise else "not larger than noise"),
        new_numbers)
    checks = [new_check]
    if len(old_candidate):
        kept = paired_bootstrap(old_candidate, old_production, seed=seed, confidence=CONFIDENCE)
        production_mean = float(np.mean(old_production))
        drop, worst = -kept.difference, -kept.low  # the loss, and the upper end of its interval
        allowed = tolerance * abs(production_mean) if regression else tolerance
        needed = holdout_needed(kept.n, drop, max(0.0, -kept.low - drop), allowed)
        old_numbers = {"n": kept.n, "candidate": _shown(old_candidate, regression),
                       "production": _shown(old_production, regression), "drop": drop, "allowed": allowed,
                       "worst": worst, "needed": needed, **_interval(kept.to_dict())}
        kept_within = bool(worst <= allowed)
        summary = (f"old holdout ({kept.n} examples): {what} {old_numbers['candidate']:.4f} against production's "
                   f"{old_numbers['production']:.4f}, a loss of {drop:+.4f} ({CONFIDENCE:.0%} CI {-kept.high:+.4f} "
                   f"to {worst:+.4f}; allowed {allowed:.4f}): ")
        if kept_within:
            summary += "shown within the tolerance"
        elif needed < 0:
            summary += "more than the tolerance allows"
        else:
            summary += (f"not shown within the tolerance: the interval is too wide on {kept.n} examples; models "
                        f"that differ this much, with this loss, need about {needed} old holdout examples to show "
                        f"it within {allowed:.4f} (or a larger --tolerance)")
        checks.append(GateCheck("old data kept", kept_within, summary, old_numbers))
    else:
        checks.append(GateCheck("old data kept", True, "no old holdout kept: nothing to compare", {"n": 0}))
    if new_chance is not None:
        learned = paired_bootstrap(new_candidate, new_chance, seed=seed, confidence=CONFIDENCE)
        chance = _shown(new_chance, regression)
        checks.append(GateCheck(
            "better than chance", bool(learned.low > 0),
            f"new holdout: {what} {new_numbers['candidate']:.4f} against {chance:.4f} for "
            f"{naive if regression else 'always answering the most common class'} "
            f"({CONFIDENCE:.0%} CI of the difference "
            f"{learned.low:+.4f} to {learned.high:+.4f})"
            + ("" if learned.low > 0 else ": the update learned nothing beyond the label shares"),
            {"chance": chance, **_interval(learned.to_dict())}))
    return GateDecision(bool(all(check.passed for check in checks)), checks, tolerance)


def holdout_needed(n: int, loss: float, half_width: float, allowed: float) -> int:
    """About how many examples would show a ``loss`` measured on ``n`` (its interval's upper half-width
    ``half_width``) within ``allowed``: the half-width shrinks as 1/sqrt(examples), so n x (half-width /
    (allowed - loss))^2. ``n`` where the interval is already within; -1 where the loss itself is not within
    ``allowed`` (no holdout shows it is)."""
    if loss > allowed:
        return -1
    if loss + half_width <= allowed:
        return n
    if loss == allowed:
        return -1
    return int(np.ceil(n * (half_width / (allowed - loss)) ** 2))


def _shown(scores: np.ndarray, regression: bool) -> float:
    """Accuracy, or the mean absolute error (scores are its negatives)."""
    mean = float(np.mean(scores))
    return -mean if regression else mean


def _interval(bootstrap: dict[str, float]) -> dict[str, float]:
    """The mean difference and its confidence interval, of a bootstrap's summary."""
    return {key: float(value) for key, value in bootstrap.items() if key in ("difference", "low", "high")}
