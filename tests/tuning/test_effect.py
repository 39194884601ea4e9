"""A trial that changed no validation prediction: told from recorded predictions, without training."""

from __future__ import annotations

import numpy as np

from tuneloop.tuning.effect import compact, same_as


def probabilities(labels: list[int], classes: int = 3) -> np.ndarray:
    out = np.full((len(labels), classes), 0.1, dtype=np.float32)
    out[np.arange(len(labels)), labels] = 0.8
    return out


LABELS = [0, 1, 2, 1] * 20


def test_the_same_labels_are_the_same_model_whatever_the_probabilities():
    earlier = [(0, compact(probabilities(LABELS), regression=False))]
    softer = probabilities(LABELS) * 0.9 + 0.1 / 3
    same = same_as(softer, earlier, regression=False)
    assert same is not None and same.trial == 0 and same.changed == 0
    assert same.sentence() == "no effect: its validation predictions match trial 0's on 80 of 80 examples"


def test_one_changed_label_in_under_a_hundred_examples_is_an_effect():
    earlier = [(3, compact(probabilities(LABELS), regression=False))]
    assert same_as(probabilities([2, *LABELS[1:]]), earlier, regression=False) is None


def test_too_few_validation_examples_cannot_tell():
    earlier = [(0, compact(probabilities([0, 1, 2, 1]), regression=False))]
    assert same_as(probabilities([0, 1, 2, 1]), earlier, regression=False) is None


def test_up_to_one_percent_changed_is_no_effect_and_the_first_match_is_named():
    labels = [i % 3 for i in range(500)]
    changed = list(labels)
    for i in range(5):  # 1% of 500
        changed[i] = (changed[i] + 1) % 3
    earlier = [(1, compact(probabilities(labels), False)), (2, compact(probabilities(changed), False))]
    same = same_as(probabilities(changed), earlier, regression=False)
    assert same is not None and same.trial == 1 and same.changed == 5
    six = list(changed)
    six[10] = (six[10] + 1) % 3
    assert same_as(probabilities(six), earlier[:1], regression=False) is None


def test_a_regressor_compares_its_values_in_standard_deviations():
    values = np.linspace(-2, 2, 80, dtype=np.float32)[:, None]
    earlier = [(0, compact(values, regression=True))]
    assert same_as(values + 0.005, earlier, regression=True).trial == 0
    assert "standard deviations" in same_as(values + 0.005, earlier, regression=True).sentence()
    assert same_as(values + 0.05, earlier, regression=True) is None


def test_predictions_of_another_validation_set_never_match():
    earlier = [(0, compact(probabilities(LABELS), False))]
    assert same_as(probabilities([*LABELS, 0]), earlier, regression=False) is None
