"""The statistical tests behind drift checks and the promotion gate.

Pure functions on counts, scores and embeddings, so each decision can be pinned down by unit tests without training
anything. Only numpy and torch are used (no scipy at run time): the chi-squared tail comes from torch's regularized
incomplete gamma function, and the resampling tests are vectorized so they stay fast on a CPU. Every random draw comes
from `np.random.default_rng(seed)`, so the same inputs and seed give the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Upper bound on the elements of one block of resampled indices or permuted labels: large enough that numpy and
# torch work on big vectorized blocks, small enough (32 MB of int64) to keep memory flat for any number of resamples.
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class TestResult:
    """A test statistic, its p-value, and what a report needs to explain it (degrees of freedom, bandwidth...)."""

    # The name starts with "Test"; tell pytest this is not a test class when a test module imports it.
    __test__ = False

    statistic: float
    p_value: float
    detail: dict[str, Any]


@dataclass(frozen=True)
class BootstrapResult:
    """The mean paired difference candidate - baseline and its percentile confidence interval."""

    difference: float
    low: float
    high: float
    confidence: float
    resamples: int
    n: int

    def to_dict(self) -> dict[str, float]:
        return {
            "difference": self.difference,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
            "resamples": self.resamples,
            "n": self.n,
        }


def chi_squared_homogeneity(reference: Mapping[Hashable, int], new: Mapping[Hashable, int]) -> TestResult:
    """Pearson's chi-squared test that two samples of labels come from one distribution.

    The counts form a 2 x k table whose classes are the union of both keys (a class missing from one side counts 0
    there); expected counts come from the margins and df = k - 1. A class counted 0 on both sides carries no
    information and is left out of the table (its expected count would be 0). With fewer than two classes nothing
    can differ, so the statistic is 0 and the p-value 1. The detail holds df and, per class, the share of each
    sample, so a drift report can show which classes moved.
    """
    reference_counts = _validated_counts("reference", reference)
    new_counts = _validated_counts("new", new)
    classes = sorted(set(reference_counts) | set(new_counts), key=lambda label: (str(label), repr(label)))
    reference_total = sum(reference_counts.values())
    new_total = sum(new_counts.values())
    shares = {
        label: {
            "reference": reference_counts.get(label, 0) / reference_total,
            "new": new_counts.get(label, 0) / new_total,
        }
        for label in classes
    }

    observed_classes = [label for label in classes if reference_counts.get(label, 0) + new_counts.get(label, 0) > 0]
    df = len(observed_classes) - 1
    if df < 1:
        return TestResult(statistic=0.0, p_value=1.0, detail={"df": max(df, 0), "shares": shares})

    table = np.array(
        [
            [reference_counts.get(label, 0) for label in observed_classes],
            [new_counts.get(label, 0) for label in observed_classes],
        ],
        dtype=np.float64,
    )
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    # P(chi2_df >= statistic) = Q(df / 2, statistic / 2), the upper regularized incomplete gamma function.
    p_value = float(
        torch.special.gammaincc(
            torch.tensor(df / 2, dtype=torch.float64), torch.tensor(statistic / 2, dtype=torch.float64)
        )
    )
    return TestResult(statistic=statistic, p_value=_clip_probability(p_value), detail={"df": df, "shares": shares})


def mmd_permutation_test(
    x: np.ndarray,
    y: np.ndarray,
    *,
    permutations: int = 200,
    seed: int = 0,
    max_per_side: int = 500,
) -> TestResult:
    """Maximum mean discrepancy two-sample test (Gretton et al. 2012) on row vectors, e.g. embeddings of old and new
    inputs, where a per-feature test would miss a shift that only shows jointly.

    The statistic is the biased MMD² with a Gaussian kernel whose bandwidth is the median pairwise distance of the
    pooled sample (the median heuristic adapts the kernel to the data's scale without a tuning knob). Each side is
    subsampled to at most `max_per_side` rows so the kernel matrix stays small. The p-value comes from relabelling
    the pooled rows at random: (1 + #{permuted statistic >= observed}) / (1 + permutations), which is never 0 and
    is valid without any assumption about the distribution. The pooled kernel matrix is computed once and each
    permutation only reweights it, so hundreds of permutations of a thousand rows take a fraction of a second.
    1-D input (a regression target) is taken as one column.
    """
    _require_positive_int("permutations", permutations)
    _require_positive_int("max_per_side", max_per_side)
    reference = _validated_rows("x", x)
    new = _validated_rows("y", y)
    if reference.shape[1] != new.shape[1]:
        raise ValueError(
            f"x and y must have the same number of columns, but got x with {reference.shape[1]} and y with "
            f"{new.shape[1]} (shapes {reference.shape} and {new.shape})."
        )

    rng = np.random.default_rng(seed)
    reference = _subsample_rows(reference, max_per_side, rng)
    new = _subsample_rows(new, max_per_side, rng)
    n_reference, n_new = len(reference), len(new)
    n_pooled = n_reference + n_new

    pooled = torch.from_numpy(np.concatenate([reference, new])).to(torch.float64)
    squared_distances = torch.cdist(pooled, pooled).pow_(2)
    bandwidth = _median_heuristic_bandwidth(squared_distances)
    kernel = torch.exp(-squared_distances / (2.0 * bandwidth**2))

    # With weights +1/n on the reference rows and -1/m on the new ones, w^T K w is exactly the biased MMD²:
    # mean K(x, x') + mean K(y, y') - 2 mean K(x, y). A permutation only rearranges the weights.
    weights = np.concatenate([np.full(n_reference, 1.0 / n_reference), np.full(n_new, -1.0 / n_new)])
    observed = float(_weighted_quadratic_forms(kernel, weights[None, :])[0])

    # Equal relabellings can reach the observed value by a different summation order; allow for that rounding.
    threshold = observed - 1e-12 * max(1.0, abs(observed))
    at_least_as_extreme = 0
    block = max(1, _BLOCK_ELEMENTS // n_pooled)
    for start in range(0, permutations, block):
        count = min(block, permutations - start)
        permuted = rng.permuted(np.broadcast_to(weights, (count, n_pooled)), axis=1)
        at_least_as_extreme += int((_weighted_quadratic_forms(kernel, permuted) >= threshold).sum())

    p_value = (1 + at_least_as_extreme) / (1 + permutations)
    detail = {"bandwidth": bandwidth, "permutations": permutations, "n_reference": n_reference, "n_new": n_new}
    return TestResult(statistic=max(observed, 0.0), p_value=p_value, detail=detail)


def paired_bootstrap(
    candidate: np.ndarray,
    baseline: np.ndarray,
    *,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """The mean difference of two models' per-example scores on the same examples, with a percentile bootstrap
    confidence interval.

    Scores are anything where higher is better: 1.0/0.0 correctness, or negative absolute error. Each resample draws
    examples with replacement and uses the same indices for both models; pairing removes the variation of example
    difficulty that both models share, so a small consistent gain is detected where comparing two independent
    means would not be. The resampled index matrix is built in blocks so memory stays bounded.
    """
    _require_positive_int("resamples", resamples)
    if not (isinstance(confidence, float | int) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be a number strictly between 0 and 1, but got {confidence!r}.")
    candidate_scores = _validated_scores("candidate", candidate)
    baseline_scores = _validated_scores("baseline", baseline)
    if len(candidate_scores) != len(baseline_scores):
        raise ValueError(
            "candidate and baseline must score the same examples, but got "
            f"{len(candidate_scores)} candidate scores and {len(baseline_scores)} baseline scores."
        )

    differences = candidate_scores - baseline_scores
    n = len(differences)
    rng = np.random.default_rng(seed)
    resampled_means = np.empty(resamples, dtype=np.float64)
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, resamples, block):
        count = min(block, resamples - start)
        indices = rng.integers(0, n, size=(count, n))
        resampled_means[start : start + count] = differences[indices].mean(axis=1)

    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled_means, [tail, 1.0 - tail])
    return BootstrapResult(
        difference=float(differences.mean()),
        low=float(low),
        high=float(high),
        confidence=float(confidence),
        resamples=resamples,
        n=n,
    )


def two_proportion_test(successes_a: int, n_a: int, successes_b: int, n_b: int) -> TestResult:
    """Two-sided z-test that two proportions are equal, e.g. accuracy on validation data and on new data.

    Uses the pooled standard error, the usual choice under the null hypothesis of equal rates; the p-value is
    erfc(|z| / sqrt(2)). When the pooled rate is 0 or 1 there is no spread to compare against, so the statistic is 0
    and the p-value 1. The detail holds both rates.
    """
    for name, successes, trials in (("a", successes_a, n_a), ("b", successes_b, n_b)):
        if not _is_int(trials) or trials < 1:
            raise ValueError(f"n_{name} must be a positive integer, but got {trials!r}.")
        if not _is_int(successes) or not 0 <= successes <= trials:
            raise ValueError(f"successes_{name} must be an integer in [0, n_{name}={trials}], but got {successes!r}.")

    rate_a = successes_a / n_a
    rate_b = successes_b / n_b
    detail = {"rate_a": rate_a, "rate_b": rate_b}
    pooled_rate = (successes_a + successes_b) / (n_a + n_b)
    standard_error = math.sqrt(pooled_rate * (1.0 - pooled_rate) * (1.0 / n_a + 1.0 / n_b))
    if standard_error == 0.0:
        return TestResult(statistic=0.0, p_value=1.0, detail=detail)
    z = (rate_a - rate_b) / standard_error
    return TestResult(statistic=z, p_value=math.erfc(abs(z) / math.sqrt(2.0)), detail=detail)


def _weighted_quadratic_forms(kernel: torch.Tensor, weights: np.ndarray) -> np.ndarray:
    """w^T K w for each row w of `weights`, in one matrix product."""
    w = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float64))
    return ((w @ kernel) * w).sum(dim=1).numpy()


def _median_heuristic_bandwidth(squared_distances: torch.Tensor) -> float:
    """The median distance between distinct pooled rows; guarded so that repeated rows cannot make it 0."""
    n = squared_distances.shape[0]
    if n < 2:
        return 1.0
    rows, columns = torch.triu_indices(n, n, offset=1)
    distances = squared_distances[rows, columns].sqrt().numpy()
    median = float(np.median(distances))
    if median > 0.0:
        return median
    # More than half the pairs coincide (e.g. a categorical feature): fall back to the typical non-zero distance.
    positive = distances[distances > 0.0]
    return float(np.median(positive)) if positive.size else 1.0


def _subsample_rows(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if len(rows) <= limit:
        return rows
    return rows[np.sort(rng.choice(len(rows), size=limit, replace=False))]


def _validated_rows(name: str, values: np.ndarray) -> np.ndarray:
    rows = np.asarray(values, dtype=np.float64)
    if rows.ndim == 1:
        rows = rows[:, None]
    if rows.ndim != 2:
        raise ValueError(f"{name} must be a 1-D or 2-D array of row vectors, but got shape {rows.shape}.")
    if rows.shape[0] == 0 or rows.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one row and one column, but got shape {rows.shape}.")
    if not np.isfinite(rows).all():
        raise ValueError(f"{name} must be finite, but got {int((~np.isfinite(rows)).sum())} NaN or infinite values.")
    return rows


def _validated_scores(name: str, values: np.ndarray) -> np.ndarray:
    scores = np.asarray(values, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-example scores, but got shape {scores.shape}.")
    if scores.size == 0:
        raise ValueError(f"{name} must hold at least one score, but got an empty array.")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} must be finite, but got {int((~np.isfinite(scores)).sum())} NaN or infinite scores.")
    return scores


def _validated_counts(name: str, counts: Mapping[Hashable, int]) -> dict[Hashable, int]:
    if not isinstance(counts, Mapping):
        raise ValueError(f"{name} must be a mapping of class to count, but got {type(counts).__name__}.")
    bad = {label: count for label, count in counts.items() if not _is_int(count) or count < 0}
    if bad:
        raise ValueError(f"{name} counts must be non-negative integers, but got {bad!r}.")
    if sum(counts.values()) == 0:
        raise ValueError(f"{name} must count at least one example, but got {dict(counts)!r}.")
    return {label: int(count) for label, count in counts.items()}


def _require_positive_int(name: str, value: int) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, but got {value!r}.")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _clip_probability(value: float) -> float:
    return min(1.0, max(0.0, value))
