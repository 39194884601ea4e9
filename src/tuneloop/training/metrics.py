"""Classification metrics from predicted and true label ids."""

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
