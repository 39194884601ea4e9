"""diagnose() on hand-built curves shaped like the ones the training loop records."""

import math

import pytest

from tuneloop.training.loop import EpochRecord
from tuneloop.tuning.diagnose import Thresholds, accuracy_interval, diagnose, needed_validation_size

BIG_VAL = 20_000  # a validation set large enough that noise never decides the label


def curve(train, val, f1, accuracy=None) -> list[EpochRecord]:
    """Epoch records from per-epoch train loss, val loss and val macro-F1 (accuracy defaults to the F1)."""
    accuracy = accuracy or f1
    return [EpochRecord(epoch, t, v, a, f, 5e-5, 40.0, 30.0)
            for epoch, (t, v, a, f) in enumerate(zip(train, val, accuracy, f1, strict=True), 1)]


# -- diverged -------------------------------------------------------------------------------------------------

def test_flag_from_the_loop_means_diverged():
    history = curve([0.69, 0.55], [0.60, 0.52], [0.70, 0.78])
    found = diagnose(history, diverged=True, n_val=BIG_VAL, num_classes=2)
    assert found.label == "diverged"
    assert found.summary == "the training loss became non-finite after epoch 2: diverged"


def test_divergence_in_the_first_epoch_leaves_no_history():
    found = diagnose([], diverged=True, n_val=50, num_classes=3)
    assert found.label == "diverged"
    assert found.evidence == {"epochs": 0, "n_val": 50}


def test_non_finite_val_loss_means_diverged():
    history = curve([0.69, 0.41], [0.60, math.nan], [0.70, 0.80])
    found = diagnose(history, diverged=False, n_val=BIG_VAL, num_classes=2)
    assert found.label == "diverged"
    assert found.evidence["nonfinite_epoch"] == 2


def test_train_loss_ending_3x_above_its_start_means_diverged_even_with_noisy_validation():
    history = curve([0.69, 1.50, 2.40], [0.70, 1.60, 2.50], [0.62, 0.55, 0.60])
    found = diagnose(history, diverged=False, n_val=60, num_classes=2)
    assert found.label == "diverged"
    assert found.evidence["train_loss_factor"] == pytest.approx(2.40 / 0.69)
    assert found.summary.startswith("train loss rose 3.5x (0.690 -> 2.400): diverged; validation is noisy too")


# -- overfitting ----------------------------------------------------------------------------------------------

def test_val_loss_rising_two_epochs_while_train_loss_falls_is_overfitting():
    history = curve(train=[0.90, 0.50, 0.20, 0.05], val=[0.40, 0.35, 0.38, 0.45], f1=[0.85, 0.88, 0.87, 0.86])
    found = diagnose(history, diverged=False, n_val=BIG_VAL, num_classes=2)
    assert found.label == "overfitting"
    assert found.evidence["rising_epochs"] == 2
    assert (found.evidence["val_loss_from"], found.evidence["val_loss_to"]) == (0.35, 0.45)
    assert found.summary == ("val loss rose 2 epochs (0.350 -> 0.450) while train loss fell (0.500 -> 0.050): "
                             "overfitting")


def test_wide_gap_with_the_metric_off_its_best_is_overfitting():
    # val loss rose only once after its minimum, so the trend rule does not fire; the gap rule does
    history = curve(train=[0.60, 0.20, 0.08, 0.05], val=[0.40, 0.30, 0.32, 0.31], f1=[0.85, 0.90, 0.88, 0.87])
    found = diagnose(history, diverged=False, n_val=BIG_VAL, num_classes=2)
    assert found.label == "overfitting"
    assert "rising_epochs" not in found.evidence
    assert found.evidence["gap_ratio"] == pytest.approx((0.31 - 0.05) / 0.31)
    assert found.evidence["metric_drop"] == pytest.approx(0.03)
    assert found.summary == ("train loss 0.050 is 84% below val loss 0.310 and macro_f1 fell from 0.900 (epoch 2) "
                             "to 0.870: overfitting")


def test_one_rise_of_val_loss_with_the_metric_holding_is_a_good_fit():
    # f1 ties at epochs 2 and 3: the tie goes to the lower val loss (epoch 2), as in the loop
    history = curve(train=[0.60, 0.30, 0.20], val=[0.40, 0.35, 0.37], f1=[0.85, 0.90, 0.90])
    found = diagnose(history, diverged=False, n_val=BIG_VAL, num_classes=2)
    assert found.label == "good_fit"
    assert found.evidence["best_epoch"] == 2
    assert found.summary == "best macro_f1 0.900 at epoch 2 of 3, val loss 0.350: good_fit"


def test_a_single_epoch_cannot_show_overfitting_however_wide_the_gap():
    found = diagnose(curve([0.02], [0.30], [0.90]), diverged=False, n_val=BIG_VAL, num_classes=2)
    assert found.label == "good_fit"
    assert found.evidence["epochs"] == 1


# -- underfitting ---------------------------------------------------------------------------------------------

def test_high_flat_train_loss_is_underfitting():
    history = curve(train=[1.30, 1.20, 1.18, 1.17], val=[1.25, 1.21, 1.20, 1.20], f1=[0.38, 0.43, 0.44, 0.44])
    found = diagnose(history, diverged=False, n_val=BIG_VAL, num_classes=4)
    assert found.label == "underfitting"
    assert found.evidence["train_loss_gain"] == pytest.approx(0.03 / 1.20)
    assert found.summary == ("train loss 1.170 is still 84% of chance level ln(4) = 1.386 and fell only 2.5% "
                             "over the last 2 epochs: underfitting")


def test_metric_barely_above_chance_is_underfitting_even_while_loss_falls():
    history = curve(train=[0.70, 0.60, 0.45], val=[0.69, 0.68, 0.67], f1=[0.50, 0.52, 0.53])
    found = diagnose(history, diverged=False, n_val=BIG_VAL, num_classes=2)
    assert found.label == "underfitting"
    assert found.summary == "best macro_f1 0.530 is within 0.05 of chance 0.500: underfitting"


def test_one_epoch_at_chance_is_underfitting():
    found = diagnose(curve([0.69], [0.69], [0.33]), diverged=False, n_val=BIG_VAL, num_classes=3)
    assert found.label == "underfitting"
    assert found.evidence["chance_metric"] == pytest.approx(1 / 3)


# -- too slow -------------------------------------------------------------------------------------------------

def test_still_improving_at_the_last_epoch_is_too_slow():
    history = curve(train=[0.60, 0.40, 0.30], val=[0.50, 0.40, 0.34], f1=[0.75, 0.82, 0.86])
    found = diagnose(history, diverged=False, n_val=BIG_VAL, num_classes=2)
    assert found.label == "too_slow"
    assert found.evidence["val_loss_gain"] == pytest.approx(0.15)
    assert found.summary == ("val loss still fell 15.0% at the last epoch (0.400 -> 0.340), the best epoch, "
                             "and train loss fell (0.400 -> 0.300): too_slow")


def test_one_epoch_with_train_loss_still_high_is_too_slow():
    found = diagnose(curve([0.62], [0.55], [0.72]), diverged=False, n_val=BIG_VAL, num_classes=2)
    assert found.label == "too_slow"
    assert found.finding.startswith("one epoch only and train loss 0.620 is still above 0.5 x ln(2) = 0.347")


# -- noisy validation -----------------------------------------------------------------------------------------

GOOD = curve(train=[0.60, 0.30, 0.20], val=[0.40, 0.33, 0.34], f1=[0.80, 0.85, 0.84])


def test_small_validation_set_is_noisy_validation_with_the_size_needed():
    found = diagnose(GOOD, diverged=False, n_val=120, num_classes=2)
    assert found.label == "noisy_validation"
    low, high = accuracy_interval(0.85, 120)
    assert found.evidence["ci_half_width"] == pytest.approx((high - low) / 2)
    assert found.evidence["ci_half_width"] == pytest.approx(0.0638, abs=1e-4)
    assert found.evidence["n_val"] == 120
    assert found.evidence["n_val_needed"] == 545
    assert "on 120 validation examples (+-0.03 needs 545)" in found.summary


def test_the_same_curves_on_a_large_validation_set_are_a_good_fit():
    found = diagnose(GOOD, diverged=False, n_val=BIG_VAL, num_classes=2)
    assert found.label == "good_fit"
    assert found.evidence["ci_half_width"] < 0.01
    assert found.evidence["n_val_needed"] == 545


def test_noise_is_evidence_but_does_not_hide_a_real_problem():
    history = curve(train=[0.90, 0.50, 0.20, 0.05], val=[0.40, 0.35, 0.38, 0.45], f1=[0.85, 0.88, 0.87, 0.86])
    found = diagnose(history, diverged=False, n_val=100, num_classes=2)
    assert found.label == "overfitting"
    assert found.evidence["ci_half_width"] > 0.03
    assert "; validation is noisy too: accuracy 0.880 +-" in found.summary


def test_thresholds_are_the_callers_to_set():
    found = diagnose(GOOD, diverged=False, n_val=120, num_classes=2, thresholds=Thresholds(ci_half_width=0.1))
    assert found.label == "good_fit"


def test_loss_metric_picks_the_epoch_of_lowest_val_loss():
    history = curve(train=[0.60, 0.30, 0.20], val=[0.40, 0.33, 0.34], f1=[0.80, 0.84, 0.85])
    assert diagnose(history, diverged=False, n_val=BIG_VAL, num_classes=2, metric="loss").evidence["best_epoch"] == 2
    assert diagnose(history, diverged=False, n_val=BIG_VAL, num_classes=2).evidence["best_epoch"] == 3


# -- intervals and sizes --------------------------------------------------------------------------------------

def test_wilson_interval_matches_known_values():
    assert accuracy_interval(0.0, 10) == pytest.approx((0.0, 0.27754), abs=1e-5)
    assert accuracy_interval(0.8, 10) == pytest.approx((0.49016, 0.94332), abs=1e-5)


def test_wilson_interval_has_width_at_perfect_accuracy():
    low, high = accuracy_interval(1.0, 20)
    assert high == 1.0
    assert low == pytest.approx(20 / (20 + 1.96**2))


@pytest.mark.parametrize(("accuracy", "expected"), [(0.5, 1064), (1.0, 61), (0.85, 545), (0.9, 388)])
def test_needed_validation_size_is_the_smallest_that_is_narrow_enough(accuracy, expected):
    # closed forms: at 0.5 n >= z^2/(4 t^2) - z^2 = 1063.3; at 1.0 n >= z^2/(2 t) - z^2 = 60.2
    n = needed_validation_size(accuracy, 0.03)
    assert n == expected

    def half(size):
        low, high = accuracy_interval(accuracy, size)
        return (high - low) / 2

    assert half(n) <= 0.03 < half(n - 1)


def test_needed_validation_size_is_close_to_the_normal_approximation_away_from_the_edges():
    wald = math.ceil(1.96**2 * 0.85 * 0.15 / 0.03**2)
    assert abs(needed_validation_size(0.85, 0.03) - wald) <= 0.01 * wald


# -- bad input ------------------------------------------------------------------------------------------------

def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="'num_classes' parameter must be an int >= 2. Got 1"):
        diagnose(GOOD, diverged=False, n_val=10, num_classes=1)
    with pytest.raises(ValueError, match="'history' parameter must hold at least one epoch"):
        diagnose([], diverged=False, n_val=10, num_classes=2)
    with pytest.raises(ValueError, match="'metric' parameter of a classification diagnosis must be one of"):
        diagnose(GOOD, diverged=False, n_val=10, num_classes=2, metric="f1")
    with pytest.raises(ValueError, match="'half_width'"):
        needed_validation_size(0.9, 0.0)


# -- regression -----------------------------------------------------------------------------------------------

def regression_curve(train, val, r2) -> list[EpochRecord]:
    return [EpochRecord(epoch, t, v, None, None, 1e-3, 40.0, 1.0, val_mae=v, val_rmse=v ** 0.5, val_r2=r)
            for epoch, (t, v, r) in enumerate(zip(train, val, r2, strict=True), 1)]


def test_regressor_near_r2_zero_is_underfitting():
    found = diagnose(regression_curve([1.0, 0.99, 0.98], [1.0, 0.99, 0.98], [0.0, 0.01, 0.02]), diverged=False,
                     n_val=BIG_VAL, num_classes=0, metric="rmse", objective="regression")
    assert found.label == "underfitting"
    assert "r2 0.020 is within 0.05 of chance 0.000" in found.finding
    assert "ci_half_width" not in found.evidence  # no accuracy interval for a regressor


def test_regressor_that_fits_is_a_good_fit_and_picks_the_lowest_rmse():
    found = diagnose(regression_curve([0.6, 0.3, 0.25], [0.5, 0.3, 0.31], [0.5, 0.7, 0.69]), diverged=False,
                     n_val=BIG_VAL, num_classes=0, metric="rmse", objective="regression")
    assert found.label == "good_fit"
    assert found.evidence["best_epoch"] == 2


def test_regressor_rejects_a_classification_metric():
    with pytest.raises(ValueError, match="'metric' parameter of a regression diagnosis must be one of mae, rmse, r2"):
        diagnose(regression_curve([0.5], [0.5], [0.5]), diverged=False, n_val=10, num_classes=0,
                 metric="accuracy", objective="regression")


# -- a language model: its quality is the validation loss, its chance the model it started from ---------------

def lm_curve(train, val) -> list[EpochRecord]:
    return [EpochRecord(epoch, t, v, None, None, 2e-4, 40.0, 30.0)
            for epoch, (t, v) in enumerate(zip(train, val, strict=True), 1)]


def diagnose_lm(train, val, start_loss):
    return diagnose(lm_curve(train, val), diverged=False, n_val=64, num_classes=0, metric="loss",
                    objective="language_modelling", start_loss=start_loss)


def test_a_language_model_no_better_than_where_it_started_is_underfitting():
    found = diagnose_lm([2.10, 2.08, 2.07], [2.02, 2.00, 1.99], start_loss=2.02)
    assert found.label == "underfitting"
    assert found.finding == "best val loss 1.990 is not 0.05 below the starting model's validation loss, 2.020"
    assert found.evidence["chance_loss"] == 2.02 and "ci_half_width" not in found.evidence


def test_a_language_model_far_below_its_start_is_read_by_its_curves():
    overfit = diagnose_lm([1.50, 0.80, 0.50, 0.30], [1.20, 1.00, 1.10, 1.30], start_loss=3.0)
    assert overfit.label == "overfitting"
    assert overfit.finding == "val loss rose 2 epochs (1.000 -> 1.300) while train loss fell (0.800 -> 0.300)"
    slow = diagnose_lm([2.5, 1.5], [2.0, 1.2], start_loss=3.0)
    assert slow.label == "too_slow"
    fit = diagnose_lm([1.4, 1.0, 0.98], [1.5, 1.0, 0.99], start_loss=3.0)
    assert fit.label == "good_fit" and fit.evidence["best_epoch"] == 3
    assert fit.finding == "best loss 0.990 at epoch 3 of 3, val loss 0.990"


def test_a_language_model_without_a_measured_start_is_never_at_chance():
    found = diagnose_lm([2.10, 2.08, 2.07], [2.02, 2.00, 1.99], start_loss=None)
    assert found.label == "good_fit" and found.evidence["chance_loss"] is None
