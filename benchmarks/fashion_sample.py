"""Fashion-MNIST samples for the image benchmarks: stratified draws of indices, in-memory examples, and
held-out scores (Fashion-MNIST: Zalando Research, MIT licence; Debian package dataset-fashion-mnist)."""

from __future__ import annotations

import numpy as np
import torch

from tuneloop import api
from tuneloop.data.fashion_mnist import CLASSES
from tuneloop.data.images import ImageExamples


def per_class(labels: np.ndarray, classes: tuple[int, ...] | range, count: int, rng: np.random.Generator,
              exclude: np.ndarray | None = None) -> np.ndarray:
    """``count`` indices of each class, drawn without replacement, none of them in ``exclude``."""
    allowed = np.ones(len(labels), dtype=bool)
    if exclude is not None:
        allowed[exclude] = False
    chosen = [rng.choice(np.flatnonzero((labels == c) & allowed), size=count, replace=False) for c in classes]
    return np.sort(np.concatenate(chosen))


def image_examples(images: np.ndarray, labels: np.ndarray, indices: np.ndarray, source: str) -> ImageExamples:
    """Fashion-MNIST images (one channel) and their class names, each located by its index in the split."""
    return ImageExamples(torch.from_numpy(images[indices][:, None]), [CLASSES[i] for i in labels[indices]],
                         [f"{source} #{i}" for i in indices], source)


def held_out_scores(run: api.Run, test: ImageExamples) -> dict[str, float]:
    """The run's accuracy and macro-F1 on ``test``, as ``Run.evaluate`` measures them."""
    metrics = run.evaluate(test).metrics
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
