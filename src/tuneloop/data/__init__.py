"""Loading and checking user data, and splitting it for training and validation.

Each kind's examples (``text.TextExamples``, ``tabular.TableExamples``, ``images.ImageExamples``) do the same
things the same way: ``subset``, ``joined`` (pooled), ``concat`` (two sets of one kind, checked),
``has_labels``, ``class_labels``, ``fingerprint``, and ``save`` / ``load_saved`` (a registered version's kept
samples). They register under the name their saved files carry, so ``load_examples`` reads any of them back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Protocol


class Examples(Protocol):
    """What every kind's examples do (texts, table rows, images, ...)."""

    source: str  # the file or folder they were read from
    locations: list[str]  # where each example is in it (for error messages)
    saved_name: ClassVar[str]

    def __len__(self) -> int: ...

    def subset(self, indices: Any) -> Examples: ...

    def joined(self, other: Any) -> Examples:
        """These examples, then ``other``'s (training and validation pooled)."""
        ...

    def concat(self, other: Any) -> Examples:
        """These examples, then ``other``'s, as one set of both sources (ValueError where they do not fit)."""
        ...

    @property
    def has_labels(self) -> bool: ...

    def class_labels(self) -> list[str]:
        """Each example's label as a class name (ValueError where read without labels)."""
        ...

    def fingerprint(self) -> str: ...

    def save(self, folder: Path, stem: str) -> None: ...


class ClassLabels:
    """``has_labels`` and ``class_labels`` of examples whose ``labels`` are class names (None where read without
    labels): texts, images."""

    labels: list[str] | None
    source: str

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def class_labels(self) -> list[str]:
        """Each example's class name (ValueError where the examples were read without labels)."""
        if self.labels is None:
            raise ValueError(f"{self.source}: the examples have no labels.")
        return list(self.labels)


EXAMPLES: dict[str, type] = {}  # the name saved examples carry -> the class that reads them back


def saved_as(name: str):
    """Register an examples class under ``name`` (a class decorator)."""

    def register(cls: type) -> type:
        cls.saved_name = name
        EXAMPLES[name] = cls
        return cls

    return register


def load_examples(folder: Path, stem: str) -> Any:
    """The examples ``save`` wrote as ``stem`` into ``folder``, of whichever kind they are (OSError, KeyError or
    ValueError where they are not readable)."""
    meta = json.loads((folder / f"{stem}.json").read_text())
    return EXAMPLES[meta["kind"]].load_saved(folder, stem, meta)


def write_meta(folder: Path, stem: str, meta: dict[str, Any]) -> None:
    (folder / f"{stem}.json").write_text(json.dumps(meta))
