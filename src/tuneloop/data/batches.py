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
class Batch:
    """The keyword arguments of one model call, the labels, and which examples they are."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor | None
    indices: np.ndarray  # positions of these examples in their data set

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device) -> Batch:
        if device.type == "cpu":
            return self
        labels = None if self.labels is None else self.labels.to(device, non_blocking=True)
        return Batch({k: v.to(device, non_blocking=True) for k, v in self.inputs.items()}, labels, self.indices)


def _labels(label_ids: list | None, indices: np.ndarray) -> torch.Tensor | None:
    """The batch's targets: class ids (long), or floats for regression values and mixed-class rows."""
    if label_ids is None:
        return None
    values = [label_ids[i] for i in indices]
    return torch.tensor(values, dtype=torch.long if isinstance(values[0], (int, np.integer)) else torch.float32)


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

    def batch(self, indices: np.ndarray) -> Batch:
        """The chosen examples padded to the longest among them."""
        rows = [self.input_ids[i] for i in indices]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, :len(row)] = 1
        return Batch({"input_ids": ids, "attention_mask": mask}, _labels(self.label_ids, indices), indices)


@dataclass(frozen=True)
class Features:
    """One fixed-size vector per example (a frozen encoder's cached output) and label ids."""

    vectors: torch.Tensor  # examples x width
    label_ids: list[int] | None

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def lengths(self) -> np.ndarray:
        return np.ones(len(self.vectors), dtype=np.int64)

    def batch(self, indices: np.ndarray) -> Batch:
        return Batch({"features": self.vectors[torch.from_numpy(indices)]}, _labels(self.label_ids, indices), indices)


@dataclass(frozen=True)
class TokenStates:
    """Per-token hidden states of every example (the cached output of frozen lower encoder layers), packed
    example after example without padding, and label ids. Batches are padded like token ids are."""

    states: torch.Tensor  # all examples' tokens x width
    offsets: np.ndarray  # example i's tokens are states[offsets[i]:offsets[i + 1]]
    label_ids: list[int] | None

    @classmethod
    def packed(cls, states: torch.Tensor, lengths: np.ndarray, label_ids: list[int] | None) -> TokenStates:
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if offsets[-1] != len(states):
            raise ValueError(f"{len(states)} cached token states do not fit examples of {offsets[-1]} tokens in all.")
        return cls(states, offsets, label_ids)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, indices: np.ndarray) -> Batch:
        spans = [(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
        width = max(end - start for start, end in spans)
        hidden = torch.zeros((len(spans), width, self.states.shape[1]), dtype=torch.float32)
        mask = torch.zeros((len(spans), width), dtype=torch.long)
        for r, (start, end) in enumerate(spans):
            hidden[r, :end - start] = self.states[start:end]
            mask[r, :end - start] = 1
        return Batch({"hidden": hidden, "attention_mask": mask}, _labels(self.label_ids, indices), indices)


@dataclass(frozen=True)
class PerEpoch:
    """Training examples drawn afresh each epoch by ``for_epoch`` (augmentation); everywhere else (length
    grouping, the range test) they read as the ``plain`` examples they are drawn from."""

    plain: Encoded | Features

    def __len__(self) -> int:
        return len(self.plain)

    @property
    def lengths(self) -> np.ndarray:
        return self.plain.lengths

    @property
    def label_ids(self) -> list[int] | None:
        return self.plain.label_ids

    def batch(self, indices: np.ndarray) -> Batch:
        return self.plain.batch(indices)

    def for_epoch(self, epoch: int) -> Encoded | Features:
        raise NotImplementedError


Examples = Encoded | Features | TokenStates | PerEpoch


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


def iterate(data: Examples, order: list[np.ndarray]) -> Iterator[Batch]:
    for indices in order:
        yield data.batch(indices)
