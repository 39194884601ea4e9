"""Augmentation of preprocessed table rows, drawn afresh each epoch from the seed and the epoch.

Two edits scaled by the recipe's ``augment`` strength, and one by its ``mixup`` share:

- Gaussian noise on the numeric columns, in their standardized units (sd ``NOISE_SD`` x strength); one-hot
  and missing-indicator columns are left exact.
- Class-rebalanced resampling (classifiers): an epoch draws as many rows as there are, with replacement,
  each with a weight of (its class's count) ** -strength: 0 keeps the data's class mix, 1 draws every class
  equally often, so rare classes are seen more.
- Mixup (Zhang et al. 2018): that share of rows is blended with another row, inputs and targets alike, with
  a weight drawn from Beta(MIXUP_ALPHA, MIXUP_ALPHA) folded to its larger half, so each row stays mostly
  itself. A classifier's targets become class probabilities for the epoch; a regressor's are blended values.

Validation rows are never augmented.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tuneloop.data.batches import Features, PerEpoch

NOISE_SD = 0.3
MIXUP_ALPHA = 0.4


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
    mixup: float = 0.0
    num_classes: int = 0  # 0: the targets are regression values (nothing to rebalance)

    def for_epoch(self, epoch: int) -> Features:
        rng = np.random.default_rng([self.seed, epoch])
        labels = np.asarray(self.plain.label_ids)
        rebalance = self.num_classes and self.strength > 0
        rows = rebalanced_indices(labels, self.strength, rng) if rebalance else np.arange(len(labels))
        vectors = self.plain.vectors[torch.from_numpy(rows)].clone()
        if len(self.numeric) and self.strength > 0:
            noise = rng.standard_normal((len(rows), len(self.numeric))) * NOISE_SD * self.strength
            vectors[:, torch.from_numpy(self.numeric)] += torch.from_numpy(noise).to(vectors.dtype)
        targets = labels[rows]
        if self.mixup <= 0:
            return Features(vectors, targets.tolist())
        if self.num_classes:  # class probabilities, so that mixed rows can hold two classes
            targets = np.eye(self.num_classes, dtype=np.float32)[targets]
        mixed = np.flatnonzero(rng.random(len(rows)) < self.mixup)
        partners = rng.integers(0, len(rows), size=len(mixed))
        weight = rng.beta(MIXUP_ALPHA, MIXUP_ALPHA, size=len(mixed))
        weight = np.maximum(weight, 1 - weight).astype(np.float32)
        w = torch.from_numpy(weight)[:, None].to(vectors.dtype)
        index, partner = torch.from_numpy(mixed), torch.from_numpy(partners)
        vectors[index] = w * vectors[index] + (1 - w) * vectors[partner]
        shape = (-1,) + (1,) * (targets.ndim - 1)
        targets = targets.astype(np.float32)
        targets[mixed] = weight.reshape(shape) * targets[mixed] + (1 - weight.reshape(shape)) * targets[partners]
        return Features(vectors, targets.tolist())
