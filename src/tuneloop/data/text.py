"""Labelled texts for classification: finding the columns, checking every row, and the train/validation split."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuneloop.data import ClassLabels, saved_as, write_meta
from tuneloop.data.files import Table, as_text, read_table
from tuneloop.errors import DataError

TEXT_COLUMNS = ("text", "sentence", "content", "review", "document", "body", "message", "tweet", "comment",
                "question", "utterance", "title")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "y", "sentiment", "intent", "topic")
MAX_LISTED = 5


@saved_as("text")
@dataclass(frozen=True)
class TextExamples(ClassLabels):
    """Texts and (optionally) their labels, each with its place in the source file for error messages."""

    texts: list[str]
    labels: list[str] | None
    locations: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int] | np.ndarray) -> TextExamples:
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        return TextExamples([self.texts[i] for i in indices], labels, [self.locations[i] for i in indices],
                            self.source)

    def joined(self, other: TextExamples) -> TextExamples:
        """These examples, then ``other``'s (training and validation examples pooled)."""
        labels = None if self.labels is None or other.labels is None else [*self.labels, *other.labels]
        return TextExamples([*self.texts, *other.texts], labels, [*self.locations, *other.locations], self.source)

    def concat(self, other: TextExamples) -> TextExamples:
        """These examples, then ``other``'s, as one set (of both sources)."""
        return dataclasses.replace(self.joined(other), source=joined_source(self, other))

    def save(self, folder: Path, stem: str) -> None:
        """``stem``.json in ``folder``: the texts, labels and where each came from."""
        write_meta(folder, stem, {"kind": self.saved_name, "texts": self.texts, "labels": self.labels,
                                  "locations": self.locations, "source": self.source})

    @classmethod
    def load_saved(cls, folder: Path, stem: str, meta: dict) -> TextExamples:
        return cls(meta["texts"], meta["labels"], meta["locations"], meta["source"])

    def fingerprint(self) -> str:
        """A short hash of the texts and labels, so a run records exactly which data it saw."""
        digest = hashlib.sha256()
        for i, text in enumerate(self.texts):
            digest.update(text.encode())
            digest.update(b"\x1f" + (self.labels[i] if self.labels else "").encode() + b"\x1e")
        return digest.hexdigest()[:16]



def joined_source(first, second) -> str:
    """The source of two sets of examples joined: one where they share it, else both."""
    return first.source if first.source == second.source else f"{first.source} + {second.source}"


def find_column(table: Table, wanted: str | None, common: tuple[str, ...], role: str, flag: str) -> str:
    """The column named ``wanted``, or the first column whose name is a common name for ``role``."""
    names = table.column_names
    if wanted is not None:
        if wanted not in names:
            raise DataError(f"{table.path}: no column named '{wanted}' for the {role}. "
                            f"The file has columns: {', '.join(names)}.")
        return wanted
    by_lower = {name.lower(): name for name in names}
    for candidate in common:
        if candidate in by_lower:
            return by_lower[candidate]
    raise DataError(f"{table.path}: found no {role} column (looked for {', '.join(common)}). "
                    f"The file has columns: {', '.join(names)}. Name the column with {flag}.")


def load_text_examples(path: str | Path, text_column: str | None = None, label_column: str | None = None,
                       *, labelled: bool = True) -> TextExamples:
    """Read a file of texts (and labels when ``labelled``), rejecting empty texts and missing labels."""
    table = read_table(path)
    text_name = find_column(table, text_column, TEXT_COLUMNS, "text", "--text-col")
    texts = [as_text(v) for v in table.columns[text_name]]
    _reject_missing(table, texts, text_name, "the text is empty")
    labels = None
    if labelled:
        label_name = find_column(table, label_column, LABEL_COLUMNS, "label", "--label-col")
        if label_name == text_name:
            raise DataError(f"{table.path}: the text and label columns are both '{text_name}'. "
                            "Name them with --text-col and --label-col.")
        labels = [as_text(v) for v in table.columns[label_name]]
        _reject_missing(table, labels, label_name, "the label is missing")
        labels = [label.strip() for label in labels]
    return TextExamples(texts, labels, table.locations, str(table.path))


def _reject_missing(table: Table, values: list[str | None], column: str, what: str) -> None:
    missing = [i for i, v in enumerate(values) if v is None]
    if not missing:
        return
    listed = "; ".join(table.where(i, column) for i in missing[:MAX_LISTED])
    more = f" (and {len(missing) - MAX_LISTED} more rows)" if len(missing) > MAX_LISTED else ""
    raise DataError(f"{listed}{more}: {what}. Expected non-empty values in every row; "
                    f"{len(missing)} of {len(values)} rows have none.")


def class_names(train: TextExamples) -> list[str]:
    """The sorted labels of the training data; there must be at least two."""
    assert train.labels is not None
    names = sorted(set(train.labels))
    if len(names) < 2:
        raise DataError(f"{train.source}: every row has the label '{names[0]}'. "
                        "A classifier needs at least two classes; found one.")
    return names


def check_validation_labels(val: TextExamples, classes: list[str]) -> None:
    assert val.labels is not None
    known = set(classes)
    unseen = [i for i, label in enumerate(val.labels) if label not in known]
    if unseen:
        names = sorted({val.labels[i] for i in unseen})
        rows = "; ".join(val.locations[i] for i in unseen[:MAX_LISTED])
        raise DataError(f"{val.source}: validation labels not in the training data: {', '.join(names)} "
                        f"({rows}{' ...' if len(unseen) > MAX_LISTED else ''}). "
                        f"Training labels are: {', '.join(classes)}.")


def stratified_split(examples: TextExamples, val_fraction: float, seed: int) -> tuple[TextExamples, TextExamples]:
    """Split into train and validation keeping each class's share; every class gets at least one of each."""
    assert examples.labels is not None
    counts = Counter(examples.labels)
    too_few = sorted(label for label, n in counts.items() if n < 2)
    if too_few:
        detail = "; ".join(f"'{label}' ({examples.locations[examples.labels.index(label)]})" for label in too_few)
        raise DataError(f"{examples.source}: too few examples to split off a validation set: class {detail} "
                        "has 1 example, and a stratified split needs at least 2 per class. "
                        "Add examples of these classes or give a validation file with --val.")
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(examples.labels):
        by_class.setdefault(label, []).append(i)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in sorted(by_class):
        members = np.array(by_class[label])
        rng.shuffle(members)
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        val_idx.extend(members[:n_val].tolist())
        train_idx.extend(members[n_val:].tolist())
    return examples.subset(sorted(train_idx)), examples.subset(sorted(val_idx))
