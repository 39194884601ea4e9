"""paired_difference(): a lead measured against the noise of the chosen metric on the same examples."""

import numpy as np
import pytest

from tuneloop.training.metrics import classification_metrics
from tuneloop.tuning.diagnose import accuracy_interval
from tuneloop.tuning.noise import paired_difference


def rare_class_set(n: int = 200, classes: int = 8) -> np.ndarray:
    """Labels like R8's validation texts: classes 0-6 common, one example of class 7."""
    labels = np.arange(n - 1) % (classes - 1)
    return np.append(labels, classes - 1)


def test_its_value_is_the_difference_of_the_metric_as_trials_are_scored():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 300)
    first = np.where(rng.random(300) < 0.8, labels, rng.integers(0, 4, 300))
    second = np.where(rng.random(300) < 0.7, labels, rng.integers(0, 4, 300))
    for metric in ("accuracy", "macro_f1"):
        found = paired_difference(labels, first, second, 4, metric)
        expected = (classification_metrics(labels, first, 4)[metric]
                    - classification_metrics(labels, second, 4)[metric])
        assert found.value == pytest.approx(expected)
        assert found.low <= found.value <= found.high


def test_the_same_predictions_differ_by_nothing():
    labels = rare_class_set()
    found = paired_difference(labels, labels, labels, 8, "macro_f1")
    assert (found.value, found.low, found.high) == (0.0, 0.0, 0.0)
    assert not found.beyond_noise


def test_a_lead_on_many_examples_is_beyond_noise():
    labels = rare_class_set()
    second = labels.copy()
    second[:30] = (labels[:30] + 1) % 7  # 30 of 200 wrong; the first trial gets every one right
    found = paired_difference(labels, labels, second, 8, "accuracy")
    assert found.value == pytest.approx(0.15)
    assert found.beyond_noise and found.low > 0.08


def test_one_text_of_a_rare_class_is_not_a_lead_however_much_macro_f1_moves():
    # Both trials agree on 199 texts; only the first gets the single example of class 7 right. Macro-F1 moves by
    # an eighth, six times the accuracy interval's half-width, yet another sample of texts would as likely hold
    # no example of that class at all.
    labels = rare_class_set()
    second = labels.copy()
    second[-1] = 0
    found = paired_difference(labels, labels, second, 8, "macro_f1")
    low, high = accuracy_interval(1.0, 200)
    assert found.value > 0.1 > 3 * (high - low) / 2
    assert not found.beyond_noise and found.low == 0.0


def test_paired_is_narrower_than_either_trials_own_interval():
    # Two trials that differ on 6 of 400 examples: their accuracies' intervals overlap almost entirely, yet every
    # difference favours the first, and the paired interval says so.
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)
    second = np.where(np.arange(400) < 80, 1 - labels, labels)
    first = second.copy()
    first[:6] = labels[:6]
    found = paired_difference(labels, first, second, 2, "accuracy")
    low, high = accuracy_interval(0.8, 400)
    assert found.beyond_noise and found.high - found.low < (high - low) / 2


def test_many_examples_are_resampled_in_chunks_with_the_same_answer(monkeypatch):
    from tuneloop.tuning import noise

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 500)
    first = np.where(rng.random(500) < 0.9, labels, 0)
    second = np.where(rng.random(500) < 0.85, labels, 0)
    whole = paired_difference(labels, first, second, 3, "macro_f1", rounds=400)
    monkeypatch.setattr(noise, "MAX_CELLS", 500 * 7)  # 7 resamples at a time
    chunked = paired_difference(labels, first, second, 3, "macro_f1", rounds=400)
    assert chunked.value == whole.value
    assert abs(chunked.low - whole.low) < 0.02 and abs(chunked.high - whole.high) < 0.02


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="'metric' parameter must be one of accuracy, macro_f1. Got 'r2'"):
        paired_difference([0, 1], [0, 1], [0, 1], 2, "r2")
    with pytest.raises(ValueError, match="same number of examples, at least one. Got 2, 1 and 2"):
        paired_difference([0, 1], [0], [0, 1], 2, "accuracy")
