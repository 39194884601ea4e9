"""Choosing where validation is small: the recipes still in the running, stratified folds, and when to."""

from __future__ import annotations

import numpy as np
import pytest

from tuneloop.tuning.selection import candidates, final_reserve, fold_count, folds, validation_is_small


def row(number: int, value: float, depth: object, noise: float = 0.12, no_effect: str = "", reason: str = "move",
        pairs: int = 0, lr: float = 1e-3) -> dict:
    return {"number": number, "status": "completed", "value": value, "reason": reason, "no_effect": no_effect,
            "recipe": {"learning_rate": lr, "trainable_layers": depth, "contrastive": pairs, "seed": 42},
            "evidence": {"ci_half_width": noise, "n_val": 26}}


def test_each_example_is_validated_once_and_every_fold_holds_every_class():
    labels = ["a"] * 10 + ["b"] * 7 + ["c"] * 5
    splits = folds(labels, 5, seed=0)
    assert len(splits) == 5
    validated = np.concatenate([val for _, val in splits])
    assert sorted(validated.tolist()) == list(range(22))
    for train, val in splits:
        assert not set(train) & set(val) and len(train) + len(val) == 22
        assert {labels[i] for i in val} == {"a", "b", "c"}
    assert [v.tolist() for _, v in folds(labels, 5, seed=0)] == [v.tolist() for _, v in splits], "seeded"
    assert fold_count(labels, regression=False) == 5 and fold_count(["a"] * 9 + ["b"] * 2, False) == 2
    assert folds(["a", "b", "a"], 2, seed=0) == [], "too few examples for two folds"


def test_a_regressors_folds_spread_each_range_of_values():
    values = list(np.linspace(0, 1, 50))
    for _, val in folds(values, 5, seed=1, regression=True):
        assert len(val) == 10 and np.ptp(np.asarray(values)[val]) > 0.8


def test_candidates_are_the_best_of_each_approach_within_the_leaders_noise():
    rows = [row(0, 0.70, 0), row(1, 0.80, 0, pairs=20), row(2, 0.75, "all"), row(3, 0.79, 2, no_effect="same"),
            row(4, 0.65, 2), row(5, 0.78, 0, pairs=20, lr=2e-3), row(6, 0.9, 4, reason="seed check: ...")]
    assert [t["number"] for t in candidates(rows)] == [1, 2, 0], (
        "0.80 leads; 0.79 repeats another; trial 5 is another pairs recipe; 0.65 is beyond the noise")


def test_a_recipe_whose_accuracy_interval_overlaps_the_leaders_is_a_candidate():
    """R8 at 16 per class: a whole fine-tune scored 0.957 on 24 validation examples, the head 0.829; the leader's
    half-width (0.09 near 1.0) would drop the head, but their intervals overlap: both go to the final choice."""
    def scored(number, value, depth, low, high):
        trial = row(number, value, depth, noise=(high - low) / 2)
        trial["evidence"].update(ci_low=low, ci_high=high, n_val=24)
        return trial

    whole, head = scored(1, 0.957, "all", 0.79, 0.99), scored(0, 0.829, 0, 0.64, 0.93)
    far = scored(2, 0.40, 2, 0.22, 0.61)
    assert [t["number"] for t in candidates([head, whole, far])] == [1, 0], "the head within noise, 0.40 beyond it"


def test_validation_is_small_where_its_interval_is_wider_than_a_moves_gain():
    assert validation_is_small(row(0, 0.8, 0, noise=0.15), 26, regression=False)
    assert not validation_is_small(row(0, 0.8, 0, noise=0.02), 2000, regression=False)
    assert validation_is_small(None, 50, regression=True) and not validation_is_small(None, 900, regression=True)


def test_a_favoured_recipe_within_noise_is_chosen_and_beyond_it_is_not():
    from tuneloop.tuning.selection import Estimate, choose

    head = Estimate(0.80, 0.73, 0.86, "5-fold cross-validation over 128 examples")
    pairs = Estimate(0.77, 0.59, 0.89, "the validation set (26 examples)")
    assert choose({0: head, 1: pairs}, favoured={1}) == 1
    assert choose({0: head, 1: pairs}, favoured=set()) == 0
    far = Estimate(0.55, 0.50, 0.60, "the validation set (400 examples)")
    assert choose({0: head, 1: far}, favoured={1}) == 0
    whole = Estimate(0.82, 0.60, 0.95, "the validation set (26 examples)")
    assert choose({0: head, 1: pairs, 2: whole}, favoured={1}, over={0}) == 2, "pairs are favoured over a head only"
    assert choose({0: head, 1: pairs}, favoured={1}, over={0}) == 1


def test_an_ensemble_holds_the_lead_and_the_others_within_noise_of_it_best_first():
    from tuneloop.tuning.selection import Estimate, ensemble_members

    head = Estimate(0.80, 0.73, 0.86, "5-fold cross-validation over 128 examples")
    whole = Estimate(0.83, 0.65, 0.93, "the validation set (26 examples)")
    pairs = Estimate(0.78, 0.60, 0.90, "the validation set (26 examples)")
    far = Estimate(0.50, 0.45, 0.55, "5-fold cross-validation over 400 examples")
    assert ensemble_members({0: head, 1: whole, 2: pairs, 3: far}, lead=1) == [1, 0, 2], "far is beyond noise"
    assert ensemble_members({0: head, 1: whole, 2: pairs}, lead=2, most=2) == [2, 1], "the lead first, then best"
    assert ensemble_members({0: head}, lead=0) == [0]
    # 24 of 24 validation examples against a head's cross-validation: macro-F1 1.00 against 0.82 is a gap
    # wider than either half-width, but the accuracy intervals overlap: the data cannot tell them apart.
    perfect = Estimate(1.00, 0.862, 1.00, "the validation set (24 examples)")
    cross_validated = Estimate(0.82, 0.80, 0.91, "5-fold cross-validation over 128 examples")
    assert ensemble_members({0: cross_validated, 1: perfect}, lead=1) == [1, 0]
    assert ensemble_members({0: Estimate(0.82, 0.78, 0.86, "5-fold"), 1: perfect}, lead=1) == [1]
    exact = Estimate(-3.0, None, None, "trial 0's validation set")  # a regressor's: no interval, no noise
    assert ensemble_members({0: exact, 1: Estimate(-3.1, None, None, "trial 1's validation set")}, lead=0) == [0]


def test_a_fits_time_is_the_trials_fixed_part_once_and_its_mean_epoch_per_epoch():
    from tuneloop.tuning.selection import fit_seconds

    # 10 s: 2 epochs of 2 s each, 6 s of loading and tuning on pairs. 8 epochs on 1.25x the examples.
    assert fit_seconds(10.0, [2.0, 2.0], epochs=8, scale=1.25) == 6.0 + 2.0 * 8 * 1.25
    assert fit_seconds(4.0, [1.0, 1.0, 1.0, 1.0], epochs=4) == 4.0, "an epoch per epoch, nothing fixed"
    assert fit_seconds(3.0, [], epochs=5, scale=2.0) == 6.0, "no epochs recorded: the trial's time, scaled"


def test_the_reserve_holds_the_leads_final_fit_where_it_fits_the_final_share():
    """Tweets at 1,000 on a 2-core EPYC: a 151 s budget (cap 75.5 s), the whole fine-tune's final fit estimated
    at 62 s and the head's folds and fit at 4 s. Both are held, with the margin, up to the cap."""
    assert final_reserve([[62.0], [4.0]], cap=75.5) == 75.5, "66 s x 1.25 + 2 s is over the cap: the cap"
    assert final_reserve([[40.0], [4.0]], cap=75.5) == pytest.approx(44 * 1.25 + 2)


def test_a_final_fit_that_cannot_fit_the_share_holds_nothing_back_but_a_cheaper_one_still_counts():
    # A 61 s budget: the whole fine-tune's fit (49 s) is over the cap of 30.5 s, its best-epoch fit (15 s) is not.
    assert final_reserve([[49.0, 15.0], [3.0]], cap=30.5) == pytest.approx(18 * 1.25 + 2)
    assert final_reserve([[49.0, 40.0], [3.0]], cap=30.5) == pytest.approx(3 * 1.25 + 2), "only the head's"
    assert final_reserve([[49.0]], cap=30.5) == 0.0, "time that buys no final fit is the search's"
    assert final_reserve([], cap=30.5) == 0.0


def test_the_lead_is_counted_before_the_others_within_noise():
    # Counted in order: once the lead's 50 s is in, the next recipe's 20 s no longer fits a cap of 60 s.
    assert final_reserve([[50.0], [20.0], [5.0]], cap=60.0) == 60.0
    assert final_reserve([[20.0], [50.0], [5.0]], cap=60.0) == pytest.approx(min(25 * 1.25 + 2, 60.0))
