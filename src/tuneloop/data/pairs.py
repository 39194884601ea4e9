"""Pairs of labelled texts for contrastive tuning of an encoder (SetFit, arXiv:2209.11055): each training text is
paired with a text of its own class (similarity target 1) and one of another class (target 0), as many times
as the recipe asks, so the pairs are balanced whatever the class shares.

With few examples per class, pairs are many: 16 examples of each of two classes make 32 texts but 496 distinct
pairs, and the encoder learns from each which texts belong together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tuneloop.data.batches import Batch, Encoded

VAL_PAIRS_PER_EXAMPLE = 2  # validation pairs: one of each kind per validation text
MAX_VAL_PAIRS = 2000


def draw_pairs(label_ids: list[int], per_example: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, same): ``per_example`` pairs for each example, half with a random partner of its own
    class and half with one of another class (where there is one); a pair never joins a text to itself."""
    labels = np.asarray(label_ids)
    classes = np.unique(labels)
    first, second, same = [], [], []
    for _ in range(max(1, per_example // 2)):
        for label in classes:
            members = np.flatnonzero(labels == label)
            others = np.flatnonzero(labels != label)
            m = len(members)
            if m > 1:  # an offset of 1..m-1 places along the class: any other member, never the text itself
                mates = members[(np.arange(m) + rng.integers(1, m, size=m)) % m]
                first.append(members), second.append(mates), same.append(np.ones(m, np.float32))
            if len(others):
                first.append(members), second.append(others[rng.integers(len(others), size=m)])
                same.append(np.zeros(m, np.float32))
    first_all, second_all, same_all = (np.concatenate(parts) for parts in (first, second, same))
    order = rng.permutation(len(first_all))
    return first_all[order].astype(np.int64), second_all[order].astype(np.int64), same_all[order]


@dataclass(frozen=True)
class TextPairs:
    """Pairs of tokenized texts and whether each pair shares a class (1.0) or not (0.0).

    A batch holds both texts of each of its pairs in one padded block, the first texts then the second ones,
    so that one encoder call embeds both sides."""

    texts: Encoded
    first: np.ndarray
    second: np.ndarray
    same: np.ndarray

    @classmethod
    def drawn(cls, texts: Encoded, per_example: int, seed: int | list[int], limit: int | None = None) -> TextPairs:
        first, second, same = draw_pairs(list(texts.label_ids or []), per_example, np.random.default_rng(seed))
        if limit is not None:
            first, second, same = first[:limit], second[:limit], same[:limit]
        return cls(texts, first, second, same)

    def __len__(self) -> int:
        return len(self.first)

    @property
    def lengths(self) -> np.ndarray:
        lengths = self.texts.lengths
        return np.maximum(lengths[self.first], lengths[self.second])

    @property
    def label_ids(self) -> list[float]:
        return self.same.tolist()

    def batch(self, indices: np.ndarray) -> Batch:
        both = self.texts.batch(np.concatenate([self.first[indices], self.second[indices]]))
        return Batch(both.inputs, torch.from_numpy(self.same[indices]), indices)
