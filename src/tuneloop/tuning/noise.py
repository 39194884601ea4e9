"""How much of the difference between two trials' validation scores is noise: a paired bootstrap over the
validation examples, of the metric the study chooses by.

The accuracy interval of one trial (``diagnose.accuracy_interval``) says how far its accuracy could move on
another sample of examples. It misjudges a lead in two ways. Two trials are scored on the same examples and
agree on most of them, so their difference moves much less than either score: the paired difference's interval
is the narrower, right one. And the metric may not be accuracy: macro-F1 weighs each class alike, so on a
validation set with one example of a rare class (R8's 200 texts hold about one "grain") one text moves it by
several points, where accuracy moves by half of one. Resampling the examples, both trials' predictions
together, and scoring each resample by the chosen metric measures both effects.

The promotion gate's ``continual.stats.paired_bootstrap`` resamples a mean of per-example scores; macro-F1 is no
such mean (each class's F1 is a ratio of counts), so here each resample counts every class's hits, predictions
and examples, and the metric is computed from those counts.

Pure: numpy only, and a fixed seed, so a study's record reads the same each time it is computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROUNDS = 2000
SEED = 0
MAX_CELLS = 4_000_000  # resamples x examples held at once (32 MB of counts); more are drawn in chunks of rounds
METRICS = ("accuracy", "macro_f1")


@dataclass(frozen=True)
class Difference:
    """The first trial's score minus the second's on the same validation examples, and the 95% interval of that
    difference over resamples of those examples."""

    value: float
    low: float
    high: float

    @property
    def beyond_noise(self) -> bool:
        """Whether the first trial is ahead by more than noise: the whole interval lies above zero."""
        return self.low > 0.0

    def sentence(self) -> str:
        return f"paired 95% interval of the difference {self.low:+.4f} to {self.high:+.4f}"


def paired_difference(labels: np.ndarray, first: np.ndarray, second: np.ndarray, num_classes: int,
                      metric: str, rounds: int = ROUNDS, seed: int = SEED) -> Difference:
    """``metric`` (accuracy or macro-F1, as ``training.metrics.classification_metrics`` computes them) of the
    ``first`` predicted class ids minus the ``second``'s, against ``labels``, with the 2.5th and 97.5th
    percentiles of that difference over ``rounds`` bootstrap resamples of the examples."""
    if metric not in METRICS:
        raise ValueError(f"The 'metric' parameter must be one of {', '.join(METRICS)}. Got {metric!r} instead.")
    labels, first, second = (np.asarray(a, dtype=np.int64).reshape(-1) for a in (labels, first, second))
    if not len(labels) == len(first) == len(second) or len(labels) == 0:
        raise ValueError(f"The 'labels', 'first' and 'second' parameters must hold the same number of examples, "
                         f"at least one. Got {len(labels)}, {len(first)} and {len(second)} instead.")
    n = len(labels)
    truth = np.eye(num_classes)[labels]  # examples x classes, one-hot
    hits_first, hits_second = truth * (first == labels)[:, None], truth * (second == labels)[:, None]
    said_first, said_second = np.eye(num_classes)[first], np.eye(num_classes)[second]
    columns = np.concatenate([truth, hits_first, said_first, hits_second, said_second], axis=1)

    def score(counts: np.ndarray) -> np.ndarray:  # resamples x columns of counts -> the difference per resample
        true, hit_a, said_a, hit_b, said_b = np.split(counts, 5, axis=1)
        return _metric(true, hit_a, said_a, metric) - _metric(true, hit_b, said_b, metric)

    value = float(score(np.ones((1, n)) @ columns)[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, MAX_CELLS // n)
    differences = []
    for start in range(0, rounds, chunk):
        size = min(chunk, rounds - start)
        drawn = np.repeat(np.arange(size) * n, n) + rng.integers(0, n, size * n)
        weights = np.bincount(drawn, minlength=size * n).reshape(size, n)  # draws of each example, per resample
        differences.append(score(weights @ columns))
    low, high = np.percentile(np.concatenate(differences), [2.5, 97.5])
    return Difference(value, float(low), float(high))


def _metric(true: np.ndarray, hits: np.ndarray, said: np.ndarray, metric: str) -> np.ndarray:
    """Per resample (rows of per-class counts): accuracy, or macro-F1 over the classes present in it."""
    if metric == "accuracy":
        return hits.sum(1) / np.maximum(1.0, true.sum(1))
    denominator = said + true
    f1 = np.divide(2 * hits, denominator, out=np.zeros_like(hits), where=denominator > 0)
    present = true > 0
    return (f1 * present).sum(1) / np.maximum(1, present.sum(1))
