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
    predicts_values = False

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
    predicts_values = True

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
class Forecast:
    """Forecast the next ``horizon`` points of a series from the points before them (``data/series.py``). Each
    window's points are standardized by its context's mean and spread, so one rate suits every series and
    level; forecasting the context's mean scores a loss near 1. A window's labels are its standardized
    targets, then three columns: the context's mean and spread (back to the series' units) and the series'
    seasonal-naive scale (the mean absolute seasonal difference of its training points: MASE's divisor).

    MASE (below 1: better than repeating the last season), sMAPE (in percent), MAE and RMSE in the series'
    units and R² (against the context's mean, standardized) are over every forecast point."""

    name = "forecast"
    metrics = ("mase", "smape", "mae", "rmse", "r2")
    predicts_values = True

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        return F.mse_loss(outputs.float(), labels[:, :outputs.shape[1]].float())

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """The standardized forecasts, one column per step ahead."""
        return outputs.float()

    def score(self, predictions: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
        horizon = predictions.shape[1]
        return (mean_squared_error(predictions, labels[:, :horizon]),
                forecast_metrics(*in_units(predictions, labels)))


def in_units(predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Standardized forecasts and a ``Forecast``'s labels as forecasts and truths in the series' units, each
    window's seasonal-naive scale, and its context's mean and spread."""
    horizon = predictions.shape[1]
    labels = np.asarray(labels, dtype=np.float64)
    mean, spread, scale = labels[:, horizon:horizon + 1], labels[:, horizon + 1:horizon + 2], labels[:, horizon + 2]
    return (predictions.astype(np.float64) * spread + mean, labels[:, :horizon] * spread + mean, scale, mean, spread)


def forecast_metrics(forecast: np.ndarray, truth: np.ndarray, scale: np.ndarray, level: np.ndarray,
                     spread: np.ndarray) -> dict[str, float]:
    """MASE (each window's absolute errors over its series' seasonal-naive ``scale``), sMAPE in percent (a
    point where forecast and truth are both 0 counts 0), MAE and RMSE over every point in the series' units,
    and R² against forecasting each context's mean ``level``, the errors of each window over its context's
    ``spread`` (so that series of every scale count alike: 0 is no better than the context's mean)."""
    forecast, truth = np.asarray(forecast, np.float64), np.asarray(truth, np.float64)
    error = np.abs(forecast - truth)
    scale = np.asarray(scale, np.float64).reshape(-1, 1)
    both = np.abs(forecast) + np.abs(truth)
    smape = np.divide(2 * error, both, out=np.zeros_like(error), where=both > 0)
    sse = float(np.sum((error / spread) ** 2))
    sst = float(np.sum(((truth - level) / spread) ** 2))
    return {"mase": float(np.mean(error / scale)), "smape": 100 * float(np.mean(smape)),
            "mae": float(np.mean(error)), "rmse": float(np.sqrt(np.mean(error ** 2))),
            "r2": 1.0 - sse / sst if sst > 0 else (1.0 if sse == 0 else 0.0)}


@dataclass(frozen=True)
class CosinePairs:
    """Contrastive tuning of an encoder on pairs of texts (SetFit's CosineSimilarityLoss): the model outputs the
    cosine similarity of each pair's two vectors, trained toward 1 for a pair of one class and 0 otherwise.
    Reported as the accuracy and macro-F1 of calling a pair "same class" above a similarity of 0.5."""

    name = "pairs"
    metrics = ("accuracy", "macro_f1")
    predicts_values = False

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


@dataclass(frozen=True)
class LanguageModelling:
    """A causal language model learning to write completions: the mean negative log-likelihood of the learned
    tokens (the answers', never the prompts'). The network returns, per sequence, the summed negative
    log-likelihood of its learned tokens and their count (two columns), so the loss is a mean over tokens
    however many examples a packed sequence holds, and a validation example's score is its own. The metric is
    the loss (perplexity is its exponential)."""

    name = "language_modelling"
    metrics = ()
    predicts_values = True  # per sequence, numbers (not class probabilities): compared as values

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        return outputs[:, 0].float().sum() / outputs[:, 1].float().sum().clamp(min=1)

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """Per sequence: the summed negative log-likelihood of its learned tokens, and their count."""
        return outputs.float()

    def score(self, predictions: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
        return float(predictions[:, 0].sum() / max(float(predictions[:, 1].sum()), 1.0)), {}


CLASSIFICATION = Classification()
PAIRS = CosinePairs()
FORECAST = Forecast()
LANGUAGE_MODELLING = LanguageModelling()
Objective = Classification | Regression | CosinePairs | Forecast | LanguageModelling
