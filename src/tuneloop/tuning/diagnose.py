"""Read a trial's recorded curves and name what went wrong, with the numbers that show it.

A pure function over the per-epoch history the training loop records, so it can be tested on recorded
curves without training anything. The rules, checked in this order, first match wins:

1. diverged          the loop flagged it, a loss is not finite, or train loss ended far above where it began
2. overfitting       val loss rose for epochs after its minimum while train loss fell, or a wide train/val
                     gap with the metric off its best
3. underfitting      train loss still high against chance level and flat, or the metric barely above chance
                     (a language model's chance is the validation loss of the model it started from)
4. too_slow          still improving at the last epoch (or one epoch only, with train loss still high)
5. noisy_validation  the validation set is too small to tell trials apart (95% interval too wide)
6. good_fit          none of the above

The width of the accuracy interval is in the evidence of every diagnosis, since a noisy validation set
weakens every other conclusion too; as a label it only shows when nothing else is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tuneloop.config import LOWER_IS_BETTER, OBJECTIVE_METRICS

if TYPE_CHECKING:  # only the attributes are read; importing the loop would pull in torch
    from tuneloop.training.loop import EpochRecord

LABELS = ("good_fit", "overfitting", "underfitting", "diverged", "too_slow", "noisy_validation")

Evidence = dict[str, float | int | str]


@dataclass(frozen=True)
class Thresholds:
    """Every numeric cutoff the rules use, in one place. Losses are natural-log cross-entropy."""

    divergence_factor: float = 3.0  # last train loss above this many times the first: diverged
    rising_epochs: int = 2  # consecutive val-loss rises after its minimum that mean overfitting
    rise_tolerance: float = 0.01  # a rise smaller than this fraction of the val-loss minimum is noise
    gap_ratio: float = 0.5  # (val loss - train loss) / val loss above this is a wide gap
    metric_drop: float = 0.01  # the metric this far (absolute) below its best has fallen
    high_loss_fraction: float = 0.5  # train loss above this fraction of ln(K) is still high
    plateau_epochs: int = 2  # epochs over which train-loss flatness is measured
    plateau_gain: float = 0.05  # train loss falling less than this fraction over plateau_epochs is flat
    chance_margin: float = 0.05  # best metric within this (absolute) of chance 1/K is barely above chance
    slow_gain: float = 0.02  # last epoch cut val loss by more than this fraction: still improving
    ci_half_width: float = 0.03  # 95% half-width of accuracy above this: trials cannot be told apart
    z: float = 1.96  # normal quantile of the 95% interval


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class Diagnosis:
    """A label read off a trial's curves, the numbers behind it, and one sentence a user can read.

    ``finding`` is the sentence without the label (policy quotes it in its reasons); ``summary`` is
    ``"<finding>: <label>"``, followed by a note on validation noise when the label is something else.
    """

    label: str
    evidence: Evidence = field(default_factory=dict)
    summary: str = ""
    finding: str = ""


def accuracy_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of an accuracy measured on ``n`` examples.

    Wilson rather than the textbook p +- z*sqrt(p(1-p)/n): that one collapses to zero width at 0% or
    100% accuracy, exactly where a small validation set says least.
    """
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"The 'accuracy' parameter must be a float in the range [0, 1]. Got {accuracy!r} instead.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"The 'n' parameter must be an int >= 1. Got {n!r} instead.")
    z2 = z * z
    denominator = 1.0 + z2 / n
    center = (accuracy + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(accuracy * (1.0 - accuracy) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def _half_width(accuracy: float, n: int, z: float) -> float:
    low, high = accuracy_interval(accuracy, n, z)
    return (high - low) / 2


def needed_validation_size(accuracy: float, half_width: float, z: float = 1.96) -> int:
    """Smallest validation size whose Wilson interval at this accuracy is no wider than +-``half_width``.

    For accuracies away from 0 and 1 this is close to ceil(z^2 a(1-a) / t^2); unlike that formula it stays
    positive at 100% accuracy. The half-width shrinks steadily with n, so a doubling then bisecting search
    finds the exact answer.
    """
    if not 0.0 < half_width < 0.5:
        raise ValueError(f"The 'half_width' parameter must be a float in the range (0, 0.5). "
                         f"Got {half_width!r} instead.")
    if _half_width(accuracy, 1, z) <= half_width:
        return 1
    low, high = 1, 2  # invariant: too wide at low, search until narrow enough at high
    while _half_width(accuracy, high, z) > half_width:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if _half_width(accuracy, middle, z) > half_width:
            low = middle
        else:
            high = middle
    return high


def diagnose(history: Sequence[EpochRecord], *, diverged: bool, n_val: int, num_classes: int,
             metric: str = "macro_f1", objective: str = "classification", start_loss: float | None = None,
             thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Diagnosis:
    """Label a trial from its per-epoch history; see the module docstring for the rules and their order.

    ``metric`` is the one the trial selected its best epoch by (as the loop does: ties go to the lower val
    loss). Level checks against chance use it too, or accuracy when it is ``"loss"``. For a regressor
    (``objective`` "regression") chance is predicting the mean: R² 0 and a standardized MSE of 1; so it is for
    a forecaster (``objective`` "forecast", its errors standardized by each window's context: chance is
    forecasting the context's mean); the accuracy interval does not apply, and ``num_classes`` is not read.
    A language model (``objective`` "language_modelling") has no chance level: a pretrained one starts far
    below ln(vocabulary). What it learned is measured against ``start_loss``, the validation loss of the model
    it started from (where known); its quality is its validation loss.
    """
    regression = objective != "classification"
    allowed = [*OBJECTIVE_METRICS[objective], "loss"]
    if metric not in allowed:
        raise ValueError(f"The 'metric' parameter of a {objective} diagnosis must be one of {', '.join(allowed)}. "
                         f"Got {metric!r} instead.")
    if isinstance(n_val, bool) or not isinstance(n_val, int) or n_val < 1:
        raise ValueError(f"The 'n_val' parameter must be an int >= 1. Got {n_val!r} instead.")
    if regression:
        num_classes = 0
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"The 'num_classes' parameter must be an int >= 2. Got {num_classes!r} instead.")
    if not history:
        if diverged:  # the loop stops mid-epoch on a non-finite loss, so there may be no record at all
            return _diagnosis("diverged", {"epochs": 0, "n_val": n_val},
                              "the training loss became non-finite in the first epoch", noisy_note="")
        raise ValueError("The 'history' parameter must hold at least one epoch unless 'diverged' is set. "
                         "Got an empty history instead.")

    t = thresholds
    curves = _Curves(history, metric, num_classes, start_loss if objective == "language_modelling" else None,
                     objective == "language_modelling")
    evidence = curves.evidence(n_val)
    accuracy = curves.best.val_accuracy
    noisy, noise_finding, noisy_note = False, "", ""
    if accuracy is not None and 0.0 <= accuracy <= 1.0:  # not NaN: a diverged trial may have recorded garbage
        low, high = accuracy_interval(accuracy, n_val, t.z)
        half = (high - low) / 2
        n_needed = needed_validation_size(accuracy, t.ci_half_width, t.z)
        evidence.update(ci_half_width=half, ci_low=low, ci_high=high, n_val_needed=n_needed)
        noisy = half > t.ci_half_width
        noise_finding = (f"accuracy {accuracy:.3f} +-{half:.3f} on {n_val} validation examples "
                         f"(+-{t.ci_half_width:g} needs {n_needed})")
        noisy_note = f"validation is noisy too: {noise_finding}" if noisy else ""

    for rule in (_diverged_rule, _overfitting_rule, _underfitting_rule, _too_slow_rule):
        found = rule(curves, diverged, t)
        if found is not None:
            label, extra, finding = found
            return _diagnosis(label, {**evidence, **extra}, finding, noisy_note)
    if noisy:
        return _diagnosis("noisy_validation", evidence,
                          f"{noise_finding}: trials cannot be told apart", noisy_note="")
    finding = (f"best {curves.quality_name} {curves.best.metric(curves.quality_name):.3f} at epoch {curves.best.epoch} "
               f"of {len(history)}, val loss {curves.best.val_loss:.3f}")
    return _diagnosis("good_fit", evidence, finding, noisy_note)


def _diagnosis(label: str, evidence: Evidence, finding: str, noisy_note: str) -> Diagnosis:
    summary = f"{finding}: {label}" + (f"; {noisy_note}" if noisy_note else "")
    return Diagnosis(label, evidence, summary, finding)


class _Curves:
    """The history as the columns and derived numbers the rules read."""

    def __init__(self, history: Sequence[EpochRecord], metric: str, num_classes: int,
                 start_loss: float | None = None, language_model: bool = False):
        self.history = list(history)
        self.train = [r.train_loss for r in self.history]
        self.val = [r.val_loss for r in self.history]
        self.num_classes = num_classes
        self.metric = metric
        if language_model:  # chance is the starting model; the loss is the quality (higher quality: lower loss)
            self.chance_loss = start_loss if start_loss is not None and start_loss > 0 else math.inf
            self.chance_quality, self.chance_name = -self.chance_loss, "the starting model's validation loss"
            self.quality_name = "loss"
        elif num_classes:
            self.chance_loss, self.chance_quality = math.log(num_classes), 1.0 / num_classes
            self.chance_name = f"ln({num_classes})"
            # Chance-level and falling-metric checks need a higher-is-better score in [0, 1].
            self.quality_name = "accuracy" if metric == "loss" else metric
        else:  # a regressor: chance predicts the mean, R² 0 and MSE 1 on the standardized target
            self.chance_loss, self.chance_quality, self.chance_name = 1.0, 0.0, "(the MSE of the mean)"
            self.quality_name = "r2"
        self.quality = [-r.val_loss if language_model else r.metric(self.quality_name) for r in self.history]
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        # As the loop picks it: the first epoch with the best metric, ties going to the lower val loss.
        self.best_index = max(range(len(self.history)),
                              key=lambda i: (sign * self.history[i].metric(metric), -self.history[i].val_loss))
        self.best = self.history[self.best_index]
        self.best_quality = max(self.quality)

    def evidence(self, n_val: int) -> Evidence:
        return {
            "epochs": len(self.history), "best_epoch": self.best.epoch, "metric": self.metric,
            "best_metric": self.best.metric(self.metric), "val_accuracy": self.best.val_accuracy,
            "first_train_loss": self.train[0], "last_train_loss": self.train[-1],
            "min_val_loss": min(self.val), "last_val_loss": self.val[-1],
            "chance_loss": self.chance_loss if math.isfinite(self.chance_loss) else None, "n_val": n_val,
        }


_Found = tuple[str, Evidence, str] | None  # label, extra evidence, finding; None: rule does not apply


def _diverged_rule(c: _Curves, diverged: bool, t: Thresholds) -> _Found:
    """Diverged: the loop's flag, any non-finite loss, or last train loss > divergence_factor x the first."""
    if diverged:
        return "diverged", {}, f"the training loss became non-finite after epoch {len(c.history)}"
    for record in c.history:
        if not (math.isfinite(record.train_loss) and math.isfinite(record.val_loss)):
            return ("diverged", {"nonfinite_epoch": record.epoch},
                    f"a loss is not finite at epoch {record.epoch} (train {record.train_loss}, val {record.val_loss})")
    if len(c.train) >= 2 and c.train[0] > 0 and c.train[-1] > t.divergence_factor * c.train[0]:
        factor = c.train[-1] / c.train[0]
        return ("diverged", {"train_loss_factor": factor},
                f"train loss rose {factor:.1f}x ({c.train[0]:.3f} -> {c.train[-1]:.3f})")
    return None


def _overfitting_rule(c: _Curves, diverged: bool, t: Thresholds) -> _Found:
    """Overfitting: val loss rose rising_epochs in a row after its minimum while train loss fell over them,
    or (val - train) / val > gap_ratio at the last epoch with the metric fallen metric_drop from its best."""
    low = c.val.index(min(c.val))
    rises = 0
    while low + rises + 1 < len(c.val) and c.val[low + rises + 1] > c.val[low + rises]:
        rises += 1
    end = low + rises
    risen = c.val[end] > c.val[low] * (1 + t.rise_tolerance)
    if rises >= t.rising_epochs and risen and c.train[end] < c.train[low]:
        return ("overfitting", {"rising_epochs": rises, "val_loss_from": c.val[low], "val_loss_to": c.val[end],
                                "train_loss_from": c.train[low], "train_loss_to": c.train[end]},
                f"val loss rose {rises} epochs ({c.val[low]:.3f} -> {c.val[end]:.3f}) "
                f"while train loss fell ({c.train[low]:.3f} -> {c.train[end]:.3f})")

    gap = c.val[-1] - c.train[-1]
    ratio = gap / c.val[-1] if c.val[-1] > 0 else 0.0
    drop = c.best_quality - c.quality[-1]
    if ratio > t.gap_ratio and drop > t.metric_drop:
        best_at = c.quality.index(c.best_quality) + 1
        return ("overfitting", {"gap_ratio": ratio, "metric_drop": drop},
                f"train loss {c.train[-1]:.3f} is {ratio:.0%} below val loss {c.val[-1]:.3f} and "
                + (f"val loss rose from {-c.best_quality:.3f} (epoch {best_at}) to {-c.quality[-1]:.3f}"
                   if c.quality_name == "loss" else
                   f"{c.quality_name} fell from {c.best_quality:.3f} (epoch {best_at}) to {c.quality[-1]:.3f}"))
    return None


def _underfitting_rule(c: _Curves, diverged: bool, t: Thresholds) -> _Found:
    """Underfitting: best metric within chance_margin of chance 1/K, or train loss above
    high_loss_fraction x ln(K) and falling less than plateau_gain over the last plateau_epochs."""
    if c.best_quality < c.chance_quality + t.chance_margin:
        if c.quality_name == "loss":  # a language model: chance is where it started
            return ("underfitting", {"chance_metric": c.chance_loss},
                    f"best val loss {-c.best_quality:.3f} is not {t.chance_margin:g} below "
                    f"{c.chance_name}, {c.chance_loss:.3f}")
        return ("underfitting", {"chance_metric": c.chance_quality},
                f"best {c.quality_name} {c.best_quality:.3f} is within {t.chance_margin:g} of chance "
                f"{c.chance_quality:.3f}")
    high = c.train[-1] > t.high_loss_fraction * c.chance_loss
    window = min(t.plateau_epochs, len(c.train) - 1)
    before = c.train[-1 - window]
    if high and window >= 1 and before > 0:
        gain = (before - c.train[-1]) / before
        if gain < t.plateau_gain:
            return ("underfitting", {"train_loss_gain": gain, "plateau_epochs": window},
                    f"train loss {c.train[-1]:.3f} is still {c.train[-1] / c.chance_loss:.0%} of chance level "
                    f"{c.chance_name} = {c.chance_loss:.3f} and fell only {gain:.1%} "
                    f"over the last {window} epochs")
    return None


def _too_slow_rule(c: _Curves, diverged: bool, t: Thresholds) -> _Found:
    """Too slow: the best epoch is the last and it cut val loss by more than slow_gain while train loss fell
    too; or one epoch only, with train loss still above high_loss_fraction x ln(K) (no trend to read)."""
    if len(c.history) == 1:
        if c.train[0] > t.high_loss_fraction * c.chance_loss:
            return ("too_slow", {},
                    f"one epoch only and train loss {c.train[0]:.3f} is still above "
                    f"{t.high_loss_fraction:g} x {c.chance_name} = {t.high_loss_fraction * c.chance_loss:.3f}")
        return None
    gain = (c.val[-2] - c.val[-1]) / c.val[-2] if c.val[-2] > 0 else 0.0
    if c.best_index == len(c.history) - 1 and gain > t.slow_gain and c.train[-1] < c.train[-2]:
        return ("too_slow", {"val_loss_gain": gain},
                f"val loss still fell {gain:.1%} at the last epoch ({c.val[-2]:.3f} -> {c.val[-1]:.3f}), "
                f"the best epoch, and train loss fell ({c.train[-2]:.3f} -> {c.train[-1]:.3f})")
    return None
