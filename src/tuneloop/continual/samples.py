"""The examples a registered version keeps: a bounded, stratified sample of what it was trained on (replayed
by later updates so they do not forget) and of what it was validated on (the old holdout the promotion gate
judges updates on). Texts, table rows and images alike; saved exactly (JSON, and safetensors for pixels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tuneloop.data import Examples
from tuneloop.data import load_examples as read_saved
from tuneloop.errors import ModelError

REPLAY_SIZE = 2000  # examples of training data a version keeps for replay
HOLDOUT_SIZE = 2000  # examples of validation data it keeps for the gate


def class_labels(examples: Examples, classification: bool = True) -> list[str] | None:
    """Each example's class name, or None for a regressor's numeric targets (nothing to stratify by)."""
    return examples.class_labels() if classification else None


def stratified_indices(labels: list[str] | None, n: int, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``n`` example indices, sorted, each class keeping its share (largest remainders;
    every class at least one where ``limit`` allows); a plain random draw without labels."""
    rng = np.random.default_rng(seed)
    if n <= limit:
        return np.arange(n)
    if labels is None:
        return np.sort(rng.choice(n, size=limit, replace=False))
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    names = sorted(by_class)
    exact = np.array([len(by_class[c]) * limit / n for c in names])
    take = np.maximum(np.floor(exact).astype(int), 1 if limit >= len(names) else 0)
    for i in np.argsort(-(exact - np.floor(exact))):  # hand out what is left by largest remainder
        if take.sum() >= limit:
            break
        if take[i] < len(by_class[names[i]]):
            take[i] += 1
    while take.sum() > limit:  # the at-least-one floor overshot: trim the largest classes
        take[np.argmax(take)] -= 1
    chosen = [rng.choice(by_class[c], size=min(k, len(by_class[c])), replace=False)
              for c, k in zip(names, take, strict=True)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def bounded_sample(examples: Examples, limit: int, seed: int, classification: bool = True) -> Examples:
    """A stratified sample of at most ``limit`` examples (all of them where there are no more)."""
    labels = class_labels(examples, classification)
    return examples.subset(stratified_indices(labels, len(examples), limit, seed))


def split_off(examples: Examples, fraction: float, seed: int, classification: bool = True
              ) -> tuple[Examples, Examples]:
    """(rest, held out): about ``fraction`` of each class held out, at least one example of every class with
    two or more on each side; a plain random split without classes."""
    labels = class_labels(examples, classification)
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i in range(len(examples)):
        groups.setdefault(labels[i] if labels is not None else "", []).append(i)
    held: list[int] = []
    for name in sorted(groups):
        members = rng.permutation(groups[name])
        count = round(len(members) * fraction)
        if len(members) >= 2:
            count = min(len(members) - 1, max(1, count))
        held.extend(members[:count].tolist())
    held_set = set(held)
    rest = [i for i in range(len(examples)) if i not in held_set]
    return examples.subset(rest), examples.subset(sorted(held))


def concat(first: Examples, second: Examples) -> Examples:
    """The examples of ``first`` then ``second`` (of the same kind), as one set."""
    if type(first) is not type(second):
        raise TypeError(f"Cannot join {type(first).__name__} with {type(second).__name__}.")
    return first.concat(second)


def save_examples(examples: Examples, folder: Path, stem: str) -> None:
    """Write ``stem``.json (and for images ``stem``.safetensors with the pixels) into ``folder``."""
    examples.save(folder, stem)


def load_examples(folder: Path, stem: str) -> Examples:
    """The examples ``save_examples`` wrote."""
    try:
        return read_saved(folder, stem)
    except (OSError, KeyError, ValueError) as error:
        raise ModelError(f"{folder}: the kept {stem} examples are not readable ({error}).") from error
