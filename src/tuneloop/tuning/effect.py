"""Did a trial change the model? Two trials whose validation predictions agree on (almost) every example are
the same model as far as validation can tell, whatever their recipes say: the second answered no question.

Pure functions over prediction arrays, so they are tested on recorded predictions without training anything.
A classifier's predictions are compared by predicted class (probabilities x classes in, or class ids); a
regressor's by the mean absolute difference of its standardized predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NO_EFFECT_SHARE = 0.01  # at most this share of validation labels changed: the same model
NO_EFFECT_SHIFT = 0.01  # a regressor: mean |difference| of standardized predictions at most this
# Fewer validation examples than this cannot tell: two models that disagree on 5% of all texts agree on all 6 of
# a validation set 74% of the time, on all 60 only 5% of the time.
NO_EFFECT_MIN_EXAMPLES = 60


@dataclass(frozen=True)
class SameAs:
    """The earlier trial whose validation predictions a trial repeats, and by how much the two differ."""

    trial: int
    changed: int  # validation examples whose predicted class changed (0 for a regressor)
    n: int  # validation examples
    shift: float  # share of changed labels, or a regressor's mean |difference| in standard deviations
    regression: bool = False

    def sentence(self) -> str:
        if not self.regression:
            return (f"no effect: its validation predictions match trial {self.trial}'s on {self.n - self.changed} "
                    f"of {self.n} examples")
        return (f"no effect: its validation predictions differ from trial {self.trial}'s by {self.shift:.4f} "
                f"standard deviations on average")


def predicted_classes(predictions: np.ndarray) -> np.ndarray:
    """Class ids from probabilities (examples x classes); class ids pass through."""
    array = np.asarray(predictions)
    return array.argmax(1) if array.ndim == 2 and array.shape[1] > 1 else array.reshape(len(array))


def compact(predictions: np.ndarray, regression: bool) -> np.ndarray:
    """What is kept of a trial's predictions to compare it with later ones: class ids, or values (a forecast's
    every step, window after window)."""
    if regression:
        return np.asarray(predictions, dtype=np.float32).reshape(-1)
    return predicted_classes(predictions).astype(np.int64)


def same_as(predictions: np.ndarray, earlier: Sequence[tuple[int, np.ndarray]], regression: bool) -> SameAs | None:
    """The first earlier trial whose predictions ``predictions`` repeats, or None (always None with fewer than
    NO_EFFECT_MIN_EXAMPLES validation examples). ``earlier`` holds (trial number, compacted predictions) of
    trials on the same validation examples, in order."""
    mine = compact(predictions, regression)
    if len(mine) < NO_EFFECT_MIN_EXAMPLES:
        return None
    for number, theirs in earlier:
        theirs = np.asarray(theirs)
        if theirs.shape != mine.shape:  # another validation set (a resumed study with other data): no match
            continue
        n = len(mine)
        if regression:
            shift = float(np.mean(np.abs(mine - theirs))) if n else 0.0
            if shift <= NO_EFFECT_SHIFT:
                return SameAs(number, 0, n, shift, regression=True)
            continue
        changed = int(np.sum(mine != theirs))
        # "Almost none": at most 1%, so with fewer than 100 validation examples not a single label may change.
        if changed <= NO_EFFECT_SHARE * n:
            return SameAs(number, changed, n, changed / n if n else 0.0)
    return None
