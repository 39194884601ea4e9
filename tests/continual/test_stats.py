import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tuneloop.continual import stats
from tuneloop.continual.stats import (
    chi_squared_homogeneity,
    mmd_permutation_test,
    paired_bootstrap,
    two_proportion_test,
)

# ---------------------------------------------------------------------------------------------------------------------
# Chi-squared homogeneity


@pytest.mark.parametrize(
    ("reference", "new"),
    [
        ({"cat": 30, "dog": 50, "bird": 20}, {"cat": 35, "dog": 40, "bird": 25}),
        ({"cat": 30, "dog": 50}, {"cat": 10, "dog": 70}),
        ({"cat": 30, "dog": 50}, {"cat": 30, "dog": 45, "fish": 12}),  # fish absent from the reference
        ({"a": 1, "b": 2, "c": 3, "d": 4}, {"a": 4, "b": 3, "c": 2, "d": 1}),
    ],
)
def test_chi_squared_matches_scipy(reference, new):
    classes = sorted(set(reference) | set(new))
    table = [[reference.get(c, 0) for c in classes], [new.get(c, 0) for c in classes]]
    expected = scipy_stats.chi2_contingency(table, correction=False)

    result = chi_squared_homogeneity(reference, new)

    assert result.statistic == pytest.approx(expected.statistic, rel=1e-10)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-8, abs=1e-15)
    assert result.detail["df"] == expected.dof


def test_chi_squared_detail_shows_which_classes_moved():
    result = chi_squared_homogeneity({"cat": 30, "dog": 50}, {"cat": 30, "dog": 45, "fish": 25})
    shares = result.detail["shares"]
    assert shares["fish"] == {"reference": 0.0, "new": 0.25}
    assert shares["dog"]["reference"] == pytest.approx(50 / 80)
    assert shares["dog"]["new"] == pytest.approx(45 / 100)


def test_chi_squared_identical_distributions_give_p_near_one():
    result = chi_squared_homogeneity({"a": 100, "b": 200, "c": 300}, {"a": 50, "b": 100, "c": 150})
    assert result.statistic == pytest.approx(0.0, abs=1e-12)
    assert result.p_value == pytest.approx(1.0)


def test_chi_squared_with_one_class_has_nothing_to_compare():
    result = chi_squared_homogeneity({"a": 10}, {"a": 99})
    assert result.statistic == 0.0
    assert result.p_value == 1.0
    assert result.detail["df"] == 0


def test_chi_squared_ignores_a_class_counted_zero_on_both_sides():
    with_zero = chi_squared_homogeneity({"a": 10, "b": 20, "c": 0}, {"a": 15, "b": 5})
    without = chi_squared_homogeneity({"a": 10, "b": 20}, {"a": 15, "b": 5})
    assert with_zero.statistic == pytest.approx(without.statistic)
    assert with_zero.p_value == pytest.approx(without.p_value)
    assert with_zero.detail["df"] == 1


@pytest.mark.parametrize(
    ("reference", "new", "message"),
    [
        ({}, {"a": 1}, "reference must count at least one example"),
        ({"a": 1}, {"a": 0}, "new must count at least one example"),
        ({"a": -1, "b": 3}, {"a": 1}, "non-negative integers.*'a': -1"),
        ({"a": 1.5}, {"a": 1}, "non-negative integers"),
    ],
)
def test_chi_squared_rejects_bad_counts(reference, new, message):
    with pytest.raises(ValueError, match=message):
        chi_squared_homogeneity(reference, new)


# ---------------------------------------------------------------------------------------------------------------------
# MMD permutation test


def test_mmd_same_distribution_is_rarely_flagged():
    # Under the null the p-value is roughly uniform, so P(p <= 0.01) is about 0.01 per draw; requiring 18 of 20 draws
    # above 0.01 fails by chance with probability about 0.001.
    p_values = []
    for seed in range(20):
        rng = np.random.default_rng(1000 + seed)
        x = rng.normal(size=(300, 8))
        y = rng.normal(size=(300, 8))
        p_values.append(mmd_permutation_test(x, y, seed=seed).p_value)
    assert sum(p > 0.01 for p in p_values) >= 18, p_values


def test_mmd_detects_a_mean_shift():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 8))
    y = rng.normal(size=(300, 8)) + 0.5
    result = mmd_permutation_test(x, y, permutations=200, seed=0)
    assert result.p_value <= 0.01
    assert result.p_value == pytest.approx(1 / 201)
    assert result.statistic > 0


def test_mmd_is_deterministic_for_a_seed():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(700, 4))
    y = rng.normal(size=(600, 4)) + 0.05
    first = mmd_permutation_test(x, y, seed=11)
    second = mmd_permutation_test(x, y, seed=11)
    assert first == second


@pytest.mark.parametrize("shift", [0.0, 0.1, 1.0])
def test_mmd_p_value_lies_between_one_over_permutations_plus_one_and_one(shift):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 3))
    y = rng.normal(size=(40, 3)) + shift
    permutations = 99
    result = mmd_permutation_test(x, y, permutations=permutations, seed=0)
    assert 1 / (permutations + 1) <= result.p_value <= 1.0
    # The p-value is a count over permutations, never a continuous number.
    assert (result.p_value * (permutations + 1)) == pytest.approx(round(result.p_value * (permutations + 1)))


def test_mmd_statistic_is_the_biased_estimate_with_the_median_bandwidth():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 3))
    y = rng.normal(size=(15, 3)) + 0.3
    result = mmd_permutation_test(x, y, permutations=10)

    pooled = np.concatenate([x, y])
    distances = np.sqrt(((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(-1))
    bandwidth = np.median(distances[np.triu_indices(len(pooled), k=1)])
    kernel = np.exp(-(distances**2) / (2 * bandwidth**2))
    expected = kernel[:20, :20].mean() + kernel[20:, 20:].mean() - 2 * kernel[:20, 20:].mean()

    assert result.detail["bandwidth"] == pytest.approx(bandwidth)
    assert result.statistic == pytest.approx(expected, rel=1e-10)


def test_mmd_subsamples_each_side_and_reports_it():
    rng = np.random.default_rng(0)
    result = mmd_permutation_test(rng.normal(size=(900, 2)), rng.normal(size=(120, 2)), max_per_side=500)
    assert result.detail == {
        "bandwidth": result.detail["bandwidth"],
        "permutations": 200,
        "n_reference": 500,
        "n_new": 120,
    }


def test_mmd_accepts_1d_input_as_one_column():
    rng = np.random.default_rng(4)
    x = rng.normal(size=200)
    y = rng.normal(size=200) + 1.0
    as_vector = mmd_permutation_test(x, y)
    as_column = mmd_permutation_test(x[:, None], y[:, None])
    assert as_vector == as_column
    assert as_vector.p_value <= 0.01


def test_mmd_with_identical_points_guards_the_bandwidth():
    result = mmd_permutation_test(np.zeros((10, 2)), np.zeros((12, 2)), permutations=20)
    assert result.detail["bandwidth"] > 0
    assert result.statistic == pytest.approx(0.0)
    assert result.p_value == 1.0


def test_mmd_rejects_bad_input():
    with pytest.raises(ValueError, match=r"same number of columns.*x with 3 and y with 4"):
        mmd_permutation_test(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"y must hold at least one row.*\(0, 3\)"):
        mmd_permutation_test(np.zeros((5, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="x must be finite"):
        mmd_permutation_test(np.array([1.0, np.nan]), np.zeros(3))
    with pytest.raises(ValueError, match="permutations must be a positive integer, but got 0"):
        mmd_permutation_test(np.zeros(3), np.zeros(3), permutations=0)


# ---------------------------------------------------------------------------------------------------------------------
# Paired bootstrap


def test_bootstrap_a_candidate_right_wherever_the_baseline_is_and_more_is_better():
    rng = np.random.default_rng(0)
    n = 500
    baseline = (rng.random(n) < 0.7).astype(float)
    candidate = baseline.copy()
    wrong = np.flatnonzero(baseline == 0)
    candidate[rng.choice(wrong, size=n // 10, replace=False)] = 1.0

    result = paired_bootstrap(candidate, baseline)

    assert result.difference == pytest.approx(0.1)
    assert 0 < result.low < result.difference < result.high


def test_bootstrap_identical_scores_give_a_zero_interval():
    scores = np.random.default_rng(1).random(50)
    result = paired_bootstrap(scores, scores)
    assert (result.difference, result.low, result.high) == (0.0, 0.0, 0.0)


def test_bootstrap_interval_covers_the_true_difference_at_about_its_confidence():
    # Nominal 90% coverage; requiring 30 of 40 draws (75%) fails by chance with probability well under 1%.
    true_difference = 0.2
    covered = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        baseline = rng.normal(size=200)
        candidate = baseline + true_difference + rng.normal(scale=0.5, size=200)
        result = paired_bootstrap(candidate, baseline, confidence=0.9, seed=seed)
        covered += result.low <= true_difference <= result.high
    assert covered >= 30


def test_bootstrap_pairing_removes_the_shared_per_example_noise():
    rng = np.random.default_rng(2)
    n = 200
    baseline = rng.normal(scale=1.0, size=n)  # example difficulty varies a lot
    candidate = baseline + 0.05 + rng.normal(scale=0.02, size=n)  # but the candidate is a little better on each

    result = paired_bootstrap(candidate, baseline)

    assert result.low > 0
    # Comparing the two means as if they were independent samples could not tell them apart.
    unpaired_half_width = 1.96 * math.sqrt(candidate.var(ddof=1) / n + baseline.var(ddof=1) / n)
    assert result.difference - unpaired_half_width < 0 < result.difference + unpaired_half_width


def test_bootstrap_is_deterministic_for_a_seed_and_reports_its_settings():
    rng = np.random.default_rng(3)
    candidate, baseline = rng.random(80), rng.random(80)
    first = paired_bootstrap(candidate, baseline, resamples=500, seed=4, confidence=0.8)
    assert first == paired_bootstrap(candidate, baseline, resamples=500, seed=4, confidence=0.8)
    assert first.to_dict() == {
        "difference": first.difference,
        "low": first.low,
        "high": first.high,
        "confidence": 0.8,
        "resamples": 500,
        "n": 80,
    }


def test_bootstrap_in_several_blocks_matches_the_resample_count(monkeypatch):
    monkeypatch.setattr(stats, "_BLOCK_ELEMENTS", 1000)  # 10 resamples of 100 examples per block
    rng = np.random.default_rng(5)
    candidate = rng.normal(size=100) + 0.3
    baseline = rng.normal(size=100)
    result = paired_bootstrap(candidate, baseline, resamples=1005)
    assert result.resamples == 1005
    assert result.low < result.difference < result.high


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="3 candidate scores and 4 baseline scores"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="candidate must hold at least one score"):
        paired_bootstrap(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match=r"baseline must be a 1-D array.*\(2, 2\)"):
        paired_bootstrap(np.zeros(4), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="confidence must be a number strictly between 0 and 1, but got 1.5"):
        paired_bootstrap(np.zeros(3), np.zeros(3), confidence=1.5)


# ---------------------------------------------------------------------------------------------------------------------
# Two-proportion z-test


@pytest.mark.parametrize(("successes_a", "n_a", "successes_b", "n_b"), [(80, 100, 70, 100), (45, 60, 300, 500)])
def test_two_proportion_matches_the_pooled_z_formula(successes_a, n_a, successes_b, n_b):
    rate_a, rate_b = successes_a / n_a, successes_b / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    z = (rate_a - rate_b) / math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    two_sided_p = 2 * scipy_stats.norm.sf(abs(z))

    result = two_proportion_test(successes_a, n_a, successes_b, n_b)

    assert result.statistic == pytest.approx(z)
    assert result.p_value == pytest.approx(two_sided_p)
    assert result.detail == {"rate_a": rate_a, "rate_b": rate_b}


def test_two_proportion_equal_rates_give_p_one():
    assert two_proportion_test(30, 100, 60, 200).p_value == pytest.approx(1.0)


def test_two_proportion_without_spread_is_degenerate():
    result = two_proportion_test(50, 50, 20, 20)
    assert (result.statistic, result.p_value) == (0.0, 1.0)


def test_two_proportion_rejects_impossible_counts():
    with pytest.raises(ValueError, match=r"successes_b must be an integer in \[0, n_b=10\], but got 11"):
        two_proportion_test(1, 10, 11, 10)
    with pytest.raises(ValueError, match="n_a must be a positive integer, but got 0"):
        two_proportion_test(0, 0, 1, 10)
