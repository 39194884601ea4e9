"""The examples a registered version keeps: a bounded, stratified sample of what it was trained on (replayed
by later updates so they do not forget) and of what it was validated on (the old holdout the promotion gate
judges updates on). Texts, table rows and images alike; saved exactly (JSON, and safetensors for pixels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tuneloop.data.images import ImageExamples
from tuneloop.data.tabular import TableExamples, target_labels
from tuneloop.data.text import TextExamples
from tuneloop.errors import ModelError

Examples = TextExamples | TableExamples | ImageExamples
REPLAY_SIZE = 2000  # examples of training data a version keeps for replay
HOLDOUT_SIZE = 2000  # examples of validation data it keeps for the gate


def class_labels(examples: Examples, classification: bool = True) -> list[str] | None:
    """Each example's class name, or None for a regressor's numeric targets (nothing to stratify by)."""
    if not classification:
        return None
    if isinstance(examples, TableExamples):
        return target_labels(examples)
    if examples.labels is None:
        raise ValueError(f"{examples.source}: the examples have no labels.")
    return list(examples.labels)


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
    source = first.source if first.source == second.source else f"{first.source} + {second.source}"
    if isinstance(first, TextExamples):
        return TextExamples(first.texts + second.texts, _joined(first.labels, second.labels),
                            first.locations + second.locations, source)
    if isinstance(first, ImageExamples):
        if first.pixels.shape[1:] != second.pixels.shape[1:]:
            raise ValueError(f"Images of {tuple(first.pixels.shape[1:])} and {tuple(second.pixels.shape[1:])} "
                             "cannot be joined; resize them to one size first.")
        return ImageExamples(torch.cat([first.pixels, second.pixels]), _joined(first.labels, second.labels),
                             first.locations + second.locations, source)
    missing = sorted(set(first.columns) ^ set(second.columns))
    if missing:
        raise ValueError(f"{second.source}: the columns differ from {first.source}'s: {', '.join(missing)}.")
    columns = {name: list(values) + list(second.columns[name]) for name, values in first.columns.items()}
    return TableExamples(columns, _joined(first.targets, second.targets), first.locations + second.locations,
                         source, first.target_column)


def _joined(first: list | None, second: list | None) -> list | None:
    return None if first is None or second is None else list(first) + list(second)


def save_examples(examples: Examples, folder: Path, stem: str) -> None:
    """Write ``stem``.json (and for images ``stem``.safetensors with the pixels) into ``folder``."""
    meta: dict[str, Any] = {"locations": examples.locations, "source": examples.source}
    if isinstance(examples, TextExamples):
        meta.update(kind="text", texts=examples.texts, labels=examples.labels)
    elif isinstance(examples, ImageExamples):
        meta.update(kind="image", labels=examples.labels)
        save_file({"pixels": examples.pixels.contiguous()}, str(folder / f"{stem}.safetensors"))
    else:
        meta.update(kind="table", columns={k: [_plain(v) for v in vs] for k, vs in examples.columns.items()},
                    targets=None if examples.targets is None else [_plain(v) for v in examples.targets],
                    target_column=examples.target_column)
    (folder / f"{stem}.json").write_text(json.dumps(meta))


def load_examples(folder: Path, stem: str) -> Examples:
    """The examples ``save_examples`` wrote."""
    try:
        meta = json.loads((folder / f"{stem}.json").read_text())
        if meta["kind"] == "text":
            return TextExamples(meta["texts"], meta["labels"], meta["locations"], meta["source"])
        if meta["kind"] == "image":
            pixels = load_file(str(folder / f"{stem}.safetensors"))["pixels"]
            return ImageExamples(pixels, meta["labels"], meta["locations"], meta["source"])
        return TableExamples(meta["columns"], meta["targets"], meta["locations"], meta["source"],
                             meta["target_column"])
    except (OSError, KeyError, ValueError) as error:
        raise ModelError(f"{folder}: the kept {stem} examples are not readable ({error}).") from error


def _plain(value: Any) -> Any:
    """A cell as JSON keeps it: numpy scalars become Python numbers."""
    return value.item() if isinstance(value, np.generic) else value
