"""ROC AUC against scikit-learn's, binary and multiclass, with ties; regression metrics against its too."""

import numpy as np
import pytest

from tuneloop.training.metrics import roc_auc

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def test_binary_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 2, 200)
    positive = np.round(rng.random(200) * 0.5 + true * 0.3, 1)  # rounded: many ties
    probabilities = np.stack([1 - positive, positive], axis=1)
    assert roc_auc(true, probabilities) == pytest.approx(sklearn_metrics.roc_auc_score(true, positive))


def test_multiclass_auc_is_the_macro_one_vs_rest_mean():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + np.eye(4)[true]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = sklearn_metrics.roc_auc_score(true, probabilities, multi_class="ovr", average="macro")
    assert roc_auc(true, probabilities) == pytest.approx(expected)


def test_auc_is_none_without_both_positives_and_negatives():
    assert roc_auc(np.zeros(5, dtype=int), np.tile([0.6, 0.4], (5, 1))) is None


def test_regression_metrics_match_scikit_learn_and_r2_is_against_the_true_values():
    from tuneloop.training.objective import regression_metrics

    rng = np.random.default_rng(2)
    true = rng.normal(150, 60, 92)
    predicted = true * 0.4 + 90 + rng.normal(0, 40, 92)  # shrunk toward the mean: low variance, R² not symmetric
    scores = regression_metrics(true=true, predicted=predicted)
    assert scores["r2"] == pytest.approx(sklearn_metrics.r2_score(true, predicted))
    assert scores["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(true, predicted))
    assert scores["rmse"] == pytest.approx(np.sqrt(sklearn_metrics.mean_squared_error(true, predicted)))
    swapped = sklearn_metrics.r2_score(predicted, true)
    assert abs(scores["r2"] - swapped) > 0.1, "a swap of the two would be seen"
    with pytest.raises(TypeError):
        regression_metrics(predicted, true)  # keyword-only: no order to get wrong
