"""The learning-rate range test (Smith 2017; fastai's lr_find): train briefly while raising the learning rate
exponentially, record the loss, and suggest a rate from where the loss fell fastest.

The model is put back exactly as it was afterwards, so the test can run before the real training.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tuneloop.config import Recipe
from tuneloop.data.batches import Examples, iterate, training_order
from tuneloop.store.atomic import write_bytes_atomic
from tuneloop.training.loop import train_step
from tuneloop.training.objective import CLASSIFICATION, Objective
from tuneloop.training.schedule import make_optimizer

SMOOTHING = 0.9  # exponential moving average of the loss, as fastai plots it
DIVERGED = 4.0  # stop once the smoothed loss is this many times its minimum


@dataclass(frozen=True)
class LRFinding:
    learning_rates: list[float]
    losses: list[float]  # smoothed
    suggestion: float
    reason: str


def find_learning_rate(model: nn.Module, data: Examples, recipe: Recipe, device: torch.device, precision: str, *,
                       start: float = 1e-7, end: float = 1.0, steps: int = 100,
                       objective: Objective = CLASSIFICATION) -> LRFinding:
    """Sweep the learning rate from ``start`` to ``end`` over up to ``steps`` batches; the model is restored."""
    saved = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    model.to(device).train()
    optimizer = make_optimizer(model, recipe.replace(learning_rate=start), device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    factor = (end / start) ** (1 / max(1, steps - 1))
    rng = np.random.default_rng(recipe.seed)
    batches: list[np.ndarray] = []
    while len(batches) < steps:  # as many passes over the data as the sweep needs
        batches.extend(training_order(data.lengths, recipe.batch_size, rng))
    rates, losses = [], []
    smoothed, best = 0.0, math.inf
    try:
        for step, batch in enumerate(iterate(data, batches[:steps])):
            rate = start * factor ** step
            for group in optimizer.param_groups:
                group["lr"] = rate
            value = train_step(model, batch.to(device), optimizer, recipe, device, precision, trainable,
                               objective=objective)
            if not math.isfinite(value):
                break
            smoothed = SMOOTHING * smoothed + (1 - SMOOTHING) * value
            debiased = smoothed / (1 - SMOOTHING ** (step + 1))
            rates.append(rate)
            losses.append(debiased)
            best = min(best, debiased)
            if debiased > DIVERGED * best:
                break
    finally:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in saved:
                    param.copy_(saved[name])
        model.train(was_training)
    suggestion, reason = suggest(rates, losses)
    return LRFinding(rates, losses, suggestion, reason)


def suggest(rates: list[float], losses: list[float]) -> tuple[float, str]:
    """The rate of steepest descent of the smoothed loss (on a log scale), bounded by a tenth of the rate
    at the minimum: fast, and a safe distance from where the loss turns up."""
    if len(rates) < 5:
        raise ValueError(f"The range test needs at least 5 finite steps to suggest a rate. Got {len(rates)}.")
    log_rates = np.log10(rates)
    slopes = np.gradient(np.asarray(losses), log_rates)
    lowest = int(np.argmin(losses))
    skip = max(3, len(rates) // 10)  # the first points are noise: the moving average is still filling
    steepest = skip + int(np.argmin(slopes[skip:lowest + 1])) if lowest > skip else lowest
    minimum = rates[lowest]
    choice = min(rates[steepest], minimum / 10)
    which = "steepest descent" if choice == rates[steepest] else "a tenth of the loss minimum"
    return float(f"{choice:.2g}"), (f"{which}: steepest at {rates[steepest]:.2g}, minimum loss at {minimum:.2g}")


def plot(finding: LRFinding, path: str) -> None:
    """Loss against learning rate (log scale), with the suggestion marked, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(finding.learning_rates, finding.losses)
    axes.axvline(finding.suggestion, color="#d62728", linestyle="--", label=f"suggested {finding.suggestion:g}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss (smoothed)")
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_bytes_atomic(path, buffer.getvalue())
