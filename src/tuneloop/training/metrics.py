"""Classification metrics from predicted and true label ids, and ROC AUC from class probabilities."""

from __future__ import annotations

import numpy as np


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (true, predicted), 1)
    return matrix


def classification_metrics(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (the unweighted mean of per-class F1; a class never seen nor predicted scores 0)."""
    matrix = confusion_matrix(true, predicted, num_classes)
    hits = np.diag(matrix).astype(float)
    predicted_count = matrix.sum(0)
    true_count = matrix.sum(1)
    denominator = predicted_count + true_count
    f1 = np.divide(2 * hits, denominator, out=np.zeros_like(hits), where=denominator > 0)
    present = true_count > 0
    return {
        "accuracy": float(hits.sum() / max(1, matrix.sum())),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
    }


def roc_auc(true: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Area under the ROC curve: of the positive class for two classes, else the unweighted mean over
    classes of one-vs-rest AUCs (classes without both positives and negatives left out); None when no class
    has both. Computed as the Mann-Whitney statistic, ties counted half."""
    true = np.asarray(true)
    classes = [1] if probabilities.shape[1] == 2 else range(probabilities.shape[1])
    areas = []
    for k in classes:
        positive = true == k
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = _average_ranks(probabilities[:, k])
        areas.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(areas)) if areas else None


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return ((last - counts + 1 + last) / 2)[inverse]
