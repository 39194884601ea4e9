"""The promotion gate: a candidate replaces production only when it beats noise on the new holdout and is shown
to keep the old holdout within the tolerance (accuracy points for a classifier, a share of the error for a
regressor): the upper end of the loss's interval, not its point estimate, must be within it."""

from __future__ import annotations

import numpy as np
import pytest

from tuneloop.continual.gate import DEFAULT_TOLERANCE, decide


def correct(n: int, right: int, seed: int = 0) -> np.ndarray:
    """1/0 correctness scores: ``right`` of ``n`` examples right, in a random order."""
    scores = np.zeros(n)
    scores[:right] = 1.0
    return np.random.default_rng(seed).permutation(scores)


def better_on_new() -> tuple[np.ndarray, np.ndarray]:
    """A candidate right everywhere production is, and on 60 more of 200 examples."""
    production = correct(200, 100, seed=1)
    candidate = production.copy()
    candidate[np.flatnonzero(production == 0)[:60]] = 1.0
    return candidate, production


def old_with_drop(wrong_more: int, n: int = 100, production_right: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """Old-holdout scores where the candidate gets ``wrong_more`` of production's right answers wrong."""
    production = correct(n, production_right, seed=2)
    candidate = production.copy()
    candidate[np.flatnonzero(production == 1)[:wrong_more]] = 0.0
    return candidate, production


def names(checks) -> list[str]:
    return [check.name for check in checks]


def test_a_gain_within_noise_is_refused_and_the_new_data_check_is_named():
    # Same accuracy, different examples right: the mean gain is 0 and its interval straddles it.
    candidate, production = correct(200, 140, seed=3), correct(200, 140, seed=4)
    old_candidate, old_production = old_with_drop(0)

    decision = decide(candidate, production, old_candidate, old_production)

    assert not decision.promote
    assert names(decision.failed) == ["new data gain"]
    new_check = decision.checks[0]
    assert new_check.numbers["difference"] == 0.0
    assert new_check.numbers["low"] <= 0.0 <= new_check.numbers["high"]
    assert "not larger than noise" in new_check.summary


def test_identical_models_are_refused():
    scores = correct(300, 200, seed=5)
    decision = decide(scores, scores.copy(), scores, scores.copy())
    assert not decision.promote
    assert names(decision.failed) == ["new data gain"]


def test_a_large_new_gain_does_not_excuse_forgetting_beyond_the_tolerance():
    candidate, production = better_on_new()
    old_candidate, old_production = old_with_drop(5)  # 5 points lost, tolerance 2

    decision = decide(candidate, production, old_candidate, old_production)

    assert not decision.promote
    assert names(decision.failed) == ["old data kept"]
    assert decision.checks[0].passed
    old = decision.checks[1].numbers
    assert old["drop"] == pytest.approx(0.05)
    assert old["allowed"] == pytest.approx(DEFAULT_TOLERANCE)
    assert old["production"] == pytest.approx(0.90) and old["candidate"] == pytest.approx(0.85)


def test_a_candidate_better_on_new_data_and_within_tolerance_on_old_is_promoted():
    candidate, production = better_on_new()
    old_candidate, old_production = old_with_drop(2, n=2000, production_right=1800)

    decision = decide(candidate, production, old_candidate, old_production)

    assert decision.promote
    assert decision.failed == []
    assert names(decision.checks) == ["new data gain", "old data kept"]
    new = decision.checks[0].numbers
    assert new["difference"] == pytest.approx(0.3)
    assert new["low"] > 0
    assert new["candidate"] == pytest.approx(0.8) and new["production"] == pytest.approx(0.5)
    assert "larger than noise" in decision.checks[0].summary


def test_a_loss_within_the_tolerance_by_its_point_estimate_but_not_by_its_interval_is_refused():
    """250 old examples, 4 more wrong: a loss of 0.016 measured, but losses up to about 0.03 fit the data."""
    candidate, production = better_on_new()
    old_candidate, old_production = old_with_drop(4, n=250, production_right=225)
    decision = decide(candidate, production, old_candidate, old_production, tolerance=0.02)
    assert not decision.promote and names(decision.failed) == ["old data kept"]
    kept = decision.checks[1]
    assert kept.numbers["drop"] == pytest.approx(0.016) and kept.numbers["worst"] > 0.02
    assert kept.numbers["needed"] > 1000 and f"need about {kept.numbers['needed']} old holdout examples" in kept.summary


def test_a_custom_tolerance_moves_the_old_data_limit():
    candidate, production = better_on_new()
    old_candidate, old_production = old_with_drop(50, n=1000, production_right=900)  # 0.05, CI up to ~0.064
    assert decide(candidate, production, old_candidate, old_production, tolerance=0.07).promote
    assert not decide(candidate, production, old_candidate, old_production, tolerance=0.04).promote


def test_the_holdout_needed_shrinks_the_interval_to_the_room_left_under_the_tolerance():
    from tuneloop.continual.gate import holdout_needed

    assert holdout_needed(250, 0.016, 0.016, 0.02) == 250 * 4 ** 2, "half-width 0.016 must become 0.004"
    assert holdout_needed(250, 0.0, 0.01, 0.02) == 250, "already shown within: the holdout at hand"
    assert holdout_needed(250, 0.03, 0.01, 0.02) == -1, "a loss beyond the tolerance is not shown within on any"
    assert holdout_needed(100, 0.01, 0.03, 0.02) > holdout_needed(100, 0.01, 0.03, 0.04), "a wider tolerance"


def test_an_old_holdout_gain_passes_the_old_data_check():
    candidate, production = better_on_new()
    old_production = correct(100, 80, seed=6)
    old_candidate = np.ones(100)
    decision = decide(candidate, production, old_candidate, old_production)
    assert decision.promote
    assert decision.checks[1].numbers["drop"] == pytest.approx(-0.2)


def test_an_empty_old_holdout_passes_the_old_data_check():
    candidate, production = better_on_new()

    decision = decide(candidate, production, np.array([]), np.array([]))

    assert decision.promote
    old = decision.checks[1]
    assert old.name == "old data kept" and old.passed
    assert old.numbers == {"n": 0}


def test_an_empty_old_holdout_does_not_rescue_a_gain_within_noise():
    scores = correct(100, 60, seed=7)
    decision = decide(scores, scores.copy(), np.array([]), np.array([]))
    assert not decision.promote
    assert names(decision.failed) == ["new data gain"]


def regression_old(production_error: float, candidate_error: float, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Negative absolute errors around the given mean absolute errors, the same spread on every example."""
    spread = np.random.default_rng(8).uniform(-0.5, 0.5, size=n)
    spread -= spread.mean()
    return -(candidate_error + spread), -(production_error + spread)


def regression_new() -> tuple[np.ndarray, np.ndarray]:
    production_errors = np.random.default_rng(9).uniform(1.0, 3.0, size=200)
    return -(production_errors * 0.5), -production_errors


def test_for_a_regressor_the_tolerance_is_a_share_of_productions_mean_absolute_error():
    new_candidate, new_production = regression_new()
    # Production's old error is 2.0, so 2% allows a rise of 0.04: 0.03 passes (it would not in accuracy points).
    kept = decide(new_candidate, new_production, *regression_old(2.0, 2.03), regression=True)
    assert kept.promote
    assert kept.checks[1].numbers["allowed"] == pytest.approx(0.04)
    assert kept.checks[1].numbers["drop"] == pytest.approx(0.03)

    lost = decide(new_candidate, new_production, *regression_old(2.0, 2.06), regression=True)
    assert not lost.promote
    assert names(lost.failed) == ["old data kept"]
    assert lost.checks[1].numbers["drop"] == pytest.approx(0.06)


def test_for_a_regressor_the_allowed_rise_scales_with_the_error():
    new_candidate, new_production = regression_new()
    # A rise of 0.3 is 1.5% of an error of 20 (kept) but 15% of an error of 2 (lost).
    assert decide(new_candidate, new_production, *regression_old(20.0, 20.3), regression=True).promote
    assert not decide(new_candidate, new_production, *regression_old(2.0, 2.3), regression=True).promote


def test_a_regressor_report_shows_mean_absolute_errors_not_negated_scores():
    new_candidate, new_production = regression_new()
    decision = decide(new_candidate, new_production, *regression_old(2.0, 2.01), regression=True)
    new, old = decision.checks[0].numbers, decision.checks[1].numbers
    assert new["candidate"] == pytest.approx(-new_candidate.mean())
    assert new["production"] == pytest.approx(-new_production.mean())
    assert new["candidate"] < new["production"]
    assert old["production"] == pytest.approx(2.0) and old["candidate"] == pytest.approx(2.01)
    assert "mean absolute error" in decision.checks[0].summary
    assert "mean absolute error" in decision.checks[1].summary


def test_a_regressor_that_is_not_better_by_more_than_noise_is_refused():
    errors = np.random.default_rng(10).uniform(0.0, 2.0, size=150)
    shuffled = np.random.default_rng(11).permutation(errors)
    decision = decide(-shuffled, -errors, *regression_old(2.0, 2.0), regression=True)
    assert not decision.promote
    assert names(decision.failed) == ["new data gain"]


def test_the_decision_is_the_same_for_the_same_seed_and_serializes():
    candidate, production = better_on_new()
    old_candidate, old_production = old_with_drop(2, n=2000, production_right=1800)
    first = decide(candidate, production, old_candidate, old_production, seed=3)
    assert first == decide(candidate, production, old_candidate, old_production, seed=3)

    saved = first.to_dict()
    assert saved["promote"] is True
    assert saved["tolerance"] == DEFAULT_TOLERANCE
    assert [check["name"] for check in saved["checks"]] == ["new data gain", "old data kept"]
    assert all(set(check) == {"name", "passed", "summary", "numbers"} for check in saved["checks"])


def test_a_candidate_no_better_than_always_answering_the_common_class_is_refused():
    # Shuffled labels: production (which never saw these classes) scores 0 on the new holdout; a candidate
    # that learned only the label shares beats it, but not a constant answer.
    production = np.zeros(200)
    chance = correct(200, 60, seed=3)  # the most common class is 30% of the holdout
    candidate = correct(200, 58, seed=4)
    old_candidate, old_production = old_with_drop(0)
    decision = decide(candidate, production, old_candidate, old_production, new_chance=chance)
    assert not decision.promote
    assert names(decision.failed) == ["better than chance"]
    assert "learned nothing beyond the label shares" in decision.failed[0].summary


def test_a_candidate_well_above_chance_passes_the_chance_check():
    candidate, production = better_on_new()
    chance = correct(200, 40, seed=5)
    old_candidate, old_production = old_with_drop(0)
    decision = decide(candidate, production, old_candidate, old_production, new_chance=chance)
    assert decision.promote
    assert names(decision.checks) == ["new data gain", "old data kept", "better than chance"]
