"""What a network is trained to do: classify (cross-entropy over classes) or regress (mean squared error on a
standardized target). The objective owns the loss, how outputs become predictions, and the metrics; the
training loop is the same for both.

Classification targets are class ids, or rows of class probabilities where batches are mixed (mixup,
cutmix): cross-entropy takes either. Regression targets are standardized with the training mean and std,
so one learning rate suits any unit; MAE and RMSE are reported back in the target's own units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tuneloop.training.metrics import classification_metrics


@dataclass(frozen=True)
class Classification:
    name = "classification"
    metrics = ("accuracy", "macro_f1")

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        # The loss in fp32: bf16 cross-entropy loses precision exactly where gradients are small.
        return F.cross_entropy(outputs.float(), labels, label_smoothing=label_smoothing)

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities."""
        return torch.softmax(outputs.float(), dim=-1)

    def score(self, predictions: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
        """Validation loss (the mean negative log-likelihood) and accuracy and macro-F1."""
        picked = predictions[np.arange(len(labels)), labels]
        loss = float(-np.log(np.clip(picked, 1e-12, None)).mean())
        return loss, classification_metrics(labels, predictions.argmax(1), predictions.shape[1])


@dataclass(frozen=True)
class Regression:
    """``scale`` is the target's training standard deviation: errors on the standardized scale times it are
    errors in the target's units."""

    scale: float = 1.0
    name = "regression"
    metrics = ("mae", "rmse", "r2")

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        return F.mse_loss(outputs.float().squeeze(-1), labels.float())

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """Predicted values on the standardized scale, one column."""
        return outputs.float().reshape(len(outputs), -1)[:, :1]

    def score(self, predictions: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
        """Validation loss (MSE, standardized) and MAE, RMSE (target units) and R² (1 - SSE / SST)."""
        metrics = regression_metrics(true=labels, predicted=predictions[:, 0], scale=self.scale)
        return mean_squared_error(predictions[:, 0], labels), metrics


def mean_squared_error(predicted: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean((predicted.astype(np.float64) - true) ** 2))


def regression_metrics(*, true: np.ndarray, predicted: np.ndarray, scale: float = 1.0) -> dict[str, float]:
    """MAE and RMSE in units of ``scale``, and R² against predicting the mean of ``true`` (0 on constant data
    predicted exactly, negative where worse than the mean). Keyword-only: R² is not symmetric in its two
    arguments, and a swap measures it against the variance of the predictions."""
    true = np.asarray(true, dtype=np.float64)
    error = np.asarray(predicted, dtype=np.float64) - true
    total = float(np.sum((true - np.mean(true)) ** 2))
    sse = float(np.sum(error ** 2))
    r2 = 1.0 - sse / total if total > 0 else (1.0 if sse == 0 else 0.0)
    return {"mae": float(np.mean(np.abs(error))) * scale, "rmse": float(np.sqrt(np.mean(error ** 2))) * scale,
            "r2": r2}


@dataclass(frozen=True)
class CosinePairs:
    """Contrastive tuning of an encoder on pairs of texts (SetFit's CosineSimilarityLoss): the model outputs the
    cosine similarity of each pair's two vectors, trained toward 1 for a pair of one class and 0 otherwise.
    Reported as the accuracy and macro-F1 of calling a pair "same class" above a similarity of 0.5."""

    name = "pairs"
    metrics = ("accuracy", "macro_f1")

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        return F.mse_loss(outputs.float().reshape(-1), labels.float())

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """The similarities, one column."""
        return outputs.float().reshape(len(outputs), 1)

    def score(self, predictions: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
        similarity = predictions[:, 0]
        same = np.asarray(labels) > 0.5
        return (mean_squared_error(similarity, np.asarray(labels, dtype=np.float64)),
                classification_metrics(same.astype(np.int64), (similarity > 0.5).astype(np.int64), 2))


CLASSIFICATION = Classification()
PAIRS = CosinePairs()
Objective = Classification | Regression | CosinePairs
