"""Tokenized examples and the batches the training loop reads: length-grouped and padded per batch.

Padding each batch only to its own longest sequence (dynamic padding), and putting sequences of similar
length in the same batch, is most of the speed of training a transformer on a CPU: no compute is spent on
padding tokens that the attention mask throws away.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

MEGABATCH = 50  # batches sorted together; large enough to group lengths, small enough to stay random


@dataclass(frozen=True)
class Encoded:
    """Token ids per example (unpadded) and label ids (or None when unlabelled)."""

    input_ids: list[list[int]]
    label_ids: list[int] | None
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    indices: np.ndarray  # positions of these examples in the Encoded set

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device) -> Batch:
        if device.type == "cpu":
            return self
        labels = None if self.labels is None else self.labels.to(device, non_blocking=True)
        return Batch(self.input_ids.to(device, non_blocking=True), self.attention_mask.to(device, non_blocking=True),
                     labels, self.indices)


def training_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar-length examples: shuffle, sort within megabatches, shuffle the batches.

    The longest batch goes first so that an out-of-memory error shows at once, not late in an epoch.
    """
    order = rng.permutation(len(lengths))
    span = batch_size * MEGABATCH
    batches: list[np.ndarray] = []
    for start in range(0, len(order), span):
        chunk = order[start:start + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    longest = max(range(len(batches)), key=lambda b: lengths[batches[b]].max())
    batches[0], batches[longest] = batches[longest], batches[0]
    return batches


def inference_order(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """All examples sorted by length, longest first, in fixed batches: the least padding possible."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(encoded: Encoded, indices: np.ndarray) -> Batch:
    """Pad the chosen examples to the longest among them."""
    rows = [encoded.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), encoded.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, :len(row)] = 1
    labels = None
    if encoded.label_ids is not None:
        labels = torch.tensor([encoded.label_ids[i] for i in indices], dtype=torch.long)
    return Batch(ids, mask, labels, indices)


def iterate(encoded: Encoded, order: list[np.ndarray]) -> Iterator[Batch]:
    for indices in order:
        yield collate(encoded, indices)
