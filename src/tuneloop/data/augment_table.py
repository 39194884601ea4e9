"""Augmentation of preprocessed table rows, drawn afresh each epoch from the seed and the epoch.

Two edits, both scaled by the recipe's ``augment`` strength:

- Gaussian noise on the numeric columns, in their standardized units (sd ``NOISE_SD`` x strength); one-hot
  and missing-indicator columns are left exact.
- Class-rebalanced resampling: an epoch draws as many rows as there are, with replacement, each with a
  weight of (its class's count) ** -strength: 0 keeps the data's class mix, 1 draws every class equally
  often, so rare classes are seen more.

Validation rows are never augmented.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tuneloop.data.batches import Features, PerEpoch

NOISE_SD = 0.3


def rebalanced_indices(labels: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """``len(labels)`` row indices drawn with replacement, weighted by class count ** -strength."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    weights = counts[inverse].astype(np.float64) ** -strength
    return rng.choice(len(labels), size=len(labels), replace=True, p=weights / weights.sum())


@dataclass(frozen=True)
class AugmentedRows(PerEpoch):
    """Training rows whose epochs are drawn with noise and rebalanced classes (see the module docstring)."""

    numeric: np.ndarray  # positions of the numeric columns in a row vector
    strength: float
    seed: int

    def for_epoch(self, epoch: int) -> Features:
        rng = np.random.default_rng([self.seed, epoch])
        labels = np.asarray(self.plain.label_ids)
        rows = rebalanced_indices(labels, self.strength, rng)
        vectors = self.plain.vectors[torch.from_numpy(rows)].clone()
        if len(self.numeric):
            noise = rng.standard_normal((len(rows), len(self.numeric))) * NOISE_SD * self.strength
            vectors[:, torch.from_numpy(self.numeric)] += torch.from_numpy(noise).to(vectors.dtype)
        return Features(vectors, labels[rows].tolist())
