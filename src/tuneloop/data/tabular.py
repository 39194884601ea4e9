"""Tables with a target column, for tabular classification and regression: reading and checking the file,
telling the task and each column's kind, and turning rows into fixed-size float vectors.

Everything learned from data (column kinds, means, categories, classes) is learned from the training rows only,
and is saved with the model as plain JSON, so that predicting on a new file applies exactly the same transform.

Rules, chosen to be predictable rather than clever (the caller can override the task and any column's kind):

- A cell is missing when it is None, NaN, empty, or the text NA, NaN or null (in any case).
- A column is numeric when every present cell reads as a finite number, categorical otherwise.
- A column is ignored when it holds no information: every cell missing, a single value throughout, or a row id
  (a different value in every one of at least ``MIN_ROWS_FOR_ID`` rows, and either text, or whole numbers that
  are dense like a row counter -- spanning less than twice the row count, so that the training rows of a split
  still qualify -- or that sit under an id-like name such as ``id`` or ``customer_id``).
- The task is classification for text or true/false targets; regression for numbers with a fractional part;
  for whole numbers, classification when there are at most 2 distinct values, or at most
  ``MAX_INTEGER_CLASSES`` with at least ``MIN_ROWS_PER_CLASS`` rows per value on average; regression otherwise.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from tuneloop.data import saved_as, write_meta
from tuneloop.data.files import as_text, read_table
from tuneloop.data.text import MAX_LISTED, TextExamples, find_column, joined_source, stratified_split
from tuneloop.errors import ConfigError, DataError, ModelError

Task = Literal["classification", "regression"]
Kind = Literal["numeric", "categorical", "ignored"]
TASKS = ("classification", "regression")
KINDS = ("numeric", "categorical", "ignored")

# "category" and "topic", label names for texts, are more often features than targets in a table.
TARGET_COLUMNS = ("target", "label", "labels", "y", "class", "outcome")
MISSING_TEXTS = frozenset({"", "na", "nan", "null"})
MAX_CATEGORIES = 50  # one-hot slots per categorical column, besides the "other" slot
MAX_INTEGER_CLASSES = 20
MIN_ROWS_PER_CLASS = 5
MIN_ROWS_FOR_ID = 20  # in a smaller table a distinct value per row is as likely chance as an id
ID_NAMES = frozenset({"id", "index", "row", "rowid", "row_id", "uuid"})
OTHER = "(other)"
FORMAT_VERSION = 1


def is_missing(value: Any) -> bool:
    """True for None, NaN, an empty cell, and the texts NA, NaN and null in any case."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in MISSING_TEXTS


def _number(value: Any) -> float | None:
    """The cell as a finite float, or None when it is not one. True/False count as categories, not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _category(value: Any) -> str:
    """The cell as a category name: 1, 1.0 and "1" are the same category, whichever file format they came from."""
    text = as_text(value)
    return text.strip() if text is not None else ""


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


@saved_as("table")
@dataclass(frozen=True)
class TableExamples:
    """The feature columns of a table (raw cells), the targets, and where each row is in the source file."""

    columns: dict[str, list[Any]]
    targets: list[Any] | None
    locations: list[str]
    source: str
    target_column: str | None = None

    def __len__(self) -> int:
        return len(self.locations)

    def where(self, index: int, column: str | None = None) -> str:
        """'data.csv, line 7, column 'age'' for row ``index`` (0-based)."""
        place = f"{self.source}, {self.locations[index]}"
        return f"{place}, column '{column}'" if column is not None else place

    def subset(self, indices: Sequence[int] | np.ndarray) -> TableExamples:
        indices = [int(i) for i in indices]
        columns = {name: [values[i] for i in indices] for name, values in self.columns.items()}
        targets = None if self.targets is None else [self.targets[i] for i in indices]
        return TableExamples(columns, targets, [self.locations[i] for i in indices], self.source, self.target_column)

    def joined(self, other: TableExamples) -> TableExamples:
        """These rows, then ``other``'s (training and validation rows pooled); a column ``other`` lacks is
        missing there."""
        columns = {name: [*values, *other.columns.get(name, [None] * len(other))]
                   for name, values in self.columns.items()}
        targets = None if self.targets is None or other.targets is None else [*self.targets, *other.targets]
        return TableExamples(columns, targets, [*self.locations, *other.locations], self.source, self.target_column)

    def concat(self, other: TableExamples) -> TableExamples:
        """These rows, then ``other``'s, as one set (of both sources); both must have the same columns."""
        missing = sorted(set(self.columns) ^ set(other.columns))
        if missing:
            raise ValueError(f"{other.source}: the columns differ from {self.source}'s: {', '.join(missing)}.")
        joined = self.joined(other)
        return TableExamples(joined.columns, joined.targets, joined.locations, joined_source(self, other),
                             self.target_column)

    @property
    def has_labels(self) -> bool:
        return self.targets is not None

    def class_labels(self) -> list[str]:
        """Each row's target as a class name (ValueError where the rows were read without targets)."""
        return target_labels(self)

    def save(self, folder: Path, stem: str) -> None:
        """``stem``.json in ``folder``: the cells, the targets, and where each row came from."""
        write_meta(folder, stem, {"kind": self.saved_name, "locations": self.locations, "source": self.source,
                                  "columns": {k: [_plain(v) for v in vs] for k, vs in self.columns.items()},
                                  "targets": None if self.targets is None else [_plain(v) for v in self.targets],
                                  "target_column": self.target_column})

    @classmethod
    def load_saved(cls, folder: Path, stem: str, meta: dict) -> TableExamples:
        return cls(meta["columns"], meta["targets"], meta["locations"], meta["source"], meta["target_column"])

    def fingerprint(self) -> str:
        """A short hash of the column names, the cells and the targets, so a run records which data it saw."""
        digest = hashlib.sha256()
        named = list(self.columns.items())
        if self.targets is not None:
            named.append((f"target:{self.target_column or ''}", self.targets))
        for name, values in named:
            digest.update(name.encode() + b"\x1d")
            for value in values:
                digest.update(("" if is_missing(value) else _category(value)).encode() + b"\x1f")
            digest.update(b"\x1e")
        return digest.hexdigest()[:16]


def load_table_examples(path: str | Path, target_col: str | None = None, *, labelled: bool = True) -> TableExamples:
    """Read a table; with ``labelled``, find the target column (by ``target_col`` or a common name) and reject
    rows without a target. Every other column is a candidate feature; unlabelled files may still hold a target
    column, which is then left out when it is named by ``target_col``."""
    table = read_table(path)
    target_name = None
    if labelled:
        target_name = find_column(table, target_col, TARGET_COLUMNS, "target", "--target-col")
    elif target_col in table.columns:
        target_name = target_col
    columns = {name: list(values) for name, values in table.columns.items() if name != target_name}
    if not columns:
        raise DataError(f"{table.path}: the only column is the target '{target_name}'. "
                        "Expected feature columns beside it.")
    targets = None
    if labelled:
        assert target_name is not None
        targets = [value.strip() if isinstance(value, str) else value for value in table.columns[target_name]]
        missing = [i for i, value in enumerate(targets) if is_missing(value)]
        if missing:
            listed = "; ".join(table.where(i, target_name) for i in missing[:MAX_LISTED])
            more = f" (and {len(missing) - MAX_LISTED} more rows)" if len(missing) > MAX_LISTED else ""
            raise DataError(f"{listed}{more}: the target is missing. Expected a value in every row; "
                            f"{len(missing)} of {len(targets)} rows have none.")
    return TableExamples(columns, targets, list(table.locations), str(table.path), target_name)


def infer_task(targets: Sequence[Any]) -> Task:
    """'classification' or 'regression' for these targets, by the rules in this module's docstring."""
    present = [t for t in targets if not is_missing(t)]
    if not present:
        raise ValueError("No targets to infer the task from: every target is missing.")
    values = [_number(t) for t in present]
    if any(v is None for v in values):  # text, or true/false
        return "classification"
    if not all(v.is_integer() for v in values):  # type: ignore[union-attr]
        return "regression"
    distinct = len(set(values))
    if distinct <= 2 or (distinct <= MAX_INTEGER_CLASSES and len(present) >= MIN_ROWS_PER_CLASS * distinct):
        return "classification"
    return "regression"


def _column_kind(name: str, values: Sequence[Any]) -> tuple[Kind, str]:
    """The column's kind, and for an ignored column why, in words."""
    present = [v for v in values if not is_missing(v)]
    if not present:
        return "ignored", "every value is missing"
    parsed = [_number(v) for v in present]
    numeric = all(v is not None for v in parsed)
    distinct = set(parsed) if numeric else {_category(v) for v in present}
    if len(distinct) == 1:
        return "ignored", f"every value is {_category(present[0])!r}"
    if len(values) >= MIN_ROWS_FOR_ID and len(distinct) == len(present) == len(values):
        if not numeric:
            return "ignored", "a different text in every row, like a row id"
        lowered = name.strip().lower()
        id_name = lowered in ID_NAMES or lowered.endswith(("_id", " id"))
        whole = [int(v) for v in parsed if v is not None and v.is_integer()]
        if len(whole) == len(values) and (id_name or max(whole) - min(whole) < 2 * len(values)):
            return "ignored", "a different whole number in every row, like a row id"
    return ("numeric" if numeric else "categorical"), ""


def detect_column_kinds(columns: Mapping[str, Sequence[Any]]) -> dict[str, Kind]:
    """'numeric', 'categorical' or 'ignored' for each column, by the rules in this module's docstring."""
    return {name: _column_kind(name, values)[0] for name, values in columns.items()}


def _not_numbers(bad: list[tuple[int, str, Any]], source: str, locations: Sequence[str], why: str) -> DataError:
    bad = sorted(bad, key=lambda item: item[0])
    listed = "; ".join(f"{source}, {locations[i]}, column '{name}': expected a number, found {_shown(value)}"
                       for i, name, value in bad[:MAX_LISTED])
    more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
    names = sorted({name for _, name, _ in bad})
    subject = f"Column '{names[0]}' is" if len(names) == 1 else f"Columns {', '.join(map(repr, names))} are"
    return DataError(f"{listed}{more}. {subject} {why}; write a missing value as an empty cell or NA.")


@dataclass(frozen=True)
class NumericColumn:
    """A number standardized with the training mean and std; missing cells get the mean (0 after standardizing)
    and, when training had missing cells in this column, a 1 in a "was missing" column that follows."""

    name: str
    mean: float
    std: float
    indicator: bool
    kind: ClassVar[str] = "numeric"

    @property
    def feature_names(self) -> list[str]:
        return [self.name, f"{self.name} (missing)"] if self.indicator else [self.name]

    def fill(self, values: Sequence[Any], out: np.ndarray) -> list[int]:
        """Write the encoded cells into ``out`` (rows x width); return the rows whose cell is not a number."""
        bad: list[int] = []
        for i, value in enumerate(values):
            if is_missing(value):
                if self.indicator:
                    out[i, 1] = 1.0
                continue
            number = _number(value)
            if number is None:
                bad.append(i)
            else:
                out[i, 0] = (number - self.mean) / self.std
        return bad

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "mean": self.mean, "std": self.std, "indicator": self.indicator}


@dataclass(frozen=True)
class CategoricalColumn:
    """One-hot over the training categories kept, then an "other" slot for the rest and for unseen values.
    A missing cell sets no slot at all."""

    name: str
    categories: list[str]
    kind: ClassVar[str] = "categorical"

    @property
    def feature_names(self) -> list[str]:
        return [f"{self.name}={c}" for c in self.categories] + [f"{self.name}={OTHER}"]

    def fill(self, values: Sequence[Any], out: np.ndarray) -> list[int]:
        slot = {category: k for k, category in enumerate(self.categories)}
        other = len(self.categories)
        for i, value in enumerate(values):
            if not is_missing(value):
                out[i, slot.get(_category(value), other)] = 1.0
        return []

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "categories": list(self.categories)}


FeatureColumn = NumericColumn | CategoricalColumn


class TabularPreprocessor:
    """Turns table rows into float32 vectors, with everything learned from the training rows only.

    ``kinds`` overrides the detected kind of the columns it names; ``max_categories`` caps the one-hot slots
    of a categorical column to its most frequent training values (ties by name), the rest going to "other".
    """

    def __init__(self, kinds: Mapping[str, str] | None = None, max_categories: int = MAX_CATEGORIES):
        problems = [f"The kind of column '{name}' must be one of {', '.join(KINDS)}; got {kind!r}."
                    for name, kind in (kinds or {}).items() if kind not in KINDS]
        if not isinstance(max_categories, int) or max_categories < 1:
            problems.append(f"max_categories must be an int of at least 1; got {max_categories!r}.")
        if problems:
            raise ConfigError(problems)
        self.kind_overrides: dict[str, str] = dict(kinds or {})
        self.max_categories = max_categories
        self.kinds: dict[str, str] = {}  # every training column's kind, the ignored ones included
        self.columns: list[FeatureColumn] = []

    @property
    def width(self) -> int:
        return len(self.feature_names)

    @property
    def feature_names(self) -> list[str]:
        return [name for column in self.columns for name in column.feature_names]

    def fit(self, examples: TableExamples) -> TabularPreprocessor:
        unknown = [name for name in self.kind_overrides if name not in examples.columns]
        if unknown:
            raise DataError(f"{examples.source}: column kinds were given for columns the file does not have: "
                            f"{', '.join(unknown)}. The file has columns: {', '.join(examples.columns)}.")
        detected = {name: _column_kind(name, values) for name, values in examples.columns.items()}
        kinds = {name: self.kind_overrides.get(name, kind) for name, (kind, _) in detected.items()}
        columns: list[FeatureColumn] = []
        bad: list[tuple[int, str, Any]] = []
        for name, values in examples.columns.items():
            if kinds[name] == "numeric":
                present = {i: _number(v) for i, v in enumerate(values) if not is_missing(v)}
                bad.extend((i, name, values[i]) for i, v in present.items() if v is None)
                columns.append(_fit_numeric(name, [v for v in present.values() if v is not None], len(values)))
            elif kinds[name] == "categorical":
                counts = Counter(_category(v) for v in values if not is_missing(v))
                kept = sorted(counts, key=lambda c: (-counts[c], c))[:self.max_categories]
                columns.append(CategoricalColumn(name, sorted(kept)))
        if bad:
            raise _not_numbers(bad, examples.source, examples.locations, "declared numeric")
        if not columns:
            reasons = "; ".join(f"'{name}': {reason or 'declared ignored'}" for name, (_, reason) in detected.items())
            raise DataError(f"{examples.source}: no usable feature columns. Each column is ignored ({reasons}). "
                            "Expected at least one column whose values vary and are not a row id.")
        self.kinds, self.columns = kinds, columns
        return self

    def transform(self, columns: Mapping[str, Sequence[Any]], *, source: str,
                  locations: Sequence[str] | None = None) -> np.ndarray:
        """The rows of ``columns`` as a float32 array (rows x width). ``source`` (the file) and ``locations``
        (each row's place in it, as TableExamples.locations; by default 'row 1', 'row 2', ...) name bad cells
        in errors. Columns the model does not use, the target among them, are ignored."""
        if not self.columns:
            raise ValueError("This TabularPreprocessor is not fitted; call fit() or from_dict() first.")
        missing = [column.name for column in self.columns if column.name not in columns]
        if missing:
            raise DataError(f"{source}: missing feature columns the model was trained with: {', '.join(missing)}. "
                            f"The file has columns: {', '.join(columns) or '(none)'}.")
        rows = len(columns[self.columns[0].name])
        if locations is None:
            locations = [f"row {i}" for i in range(1, rows + 1)]
        out = np.zeros((rows, self.width), dtype=np.float32)
        bad: list[tuple[int, str, Any]] = []
        offset = 0
        for column in self.columns:
            values = columns[column.name]
            if len(values) != rows:
                raise ValueError(f"Column '{column.name}' has {len(values)} values; expected {rows} as in the others.")
            span = len(column.feature_names)
            bad.extend((i, column.name, values[i]) for i in column.fill(values, out[:, offset:offset + span]))
            offset += span
        if bad:
            raise _not_numbers(bad, source, locations, "numeric in the training data")
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable settings; from_dict() of them transforms exactly as this one does."""
        return {"format": FORMAT_VERSION, "max_categories": self.max_categories, "kinds": dict(self.kinds),
                "columns": [column.to_dict() for column in self.columns]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TabularPreprocessor:
        try:
            _check_format(data)
            preprocessor = cls(max_categories=int(data["max_categories"]))
            preprocessor.kinds = {str(k): str(v) for k, v in data["kinds"].items()}
            preprocessor.columns = [_column_from_dict(c) for c in data["columns"]]
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ModelError(f"The saved tabular preprocessor is not readable ({type(exc).__name__}: {exc}).") from exc
        if not preprocessor.columns:
            raise ModelError("The saved tabular preprocessor has no feature columns.")
        return preprocessor


def _mean_and_std(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and std for standardizing; a std of 0 (a constant) becomes 1 so that values are only shifted."""
    values = np.asarray(values, dtype=np.float64)
    if not values.size:
        return 0.0, 1.0
    mean, std = float(values.mean()), float(values.std())
    # a constant's std comes out as rounding noise, not always exactly 0
    return mean, std if std > 1e-12 * max(1.0, abs(mean)) else 1.0


def _fit_numeric(name: str, present: list[float], rows: int) -> NumericColumn:
    mean, std = _mean_and_std(present)
    return NumericColumn(name, mean, std, indicator=len(present) < rows)


def _check_format(data: Mapping[str, Any]) -> None:
    if data.get("format") != FORMAT_VERSION:
        raise ValueError(f"expected format {FORMAT_VERSION}, found {data.get('format')!r}")


def _column_from_dict(data: Mapping[str, Any]) -> FeatureColumn:
    if data["kind"] == "numeric":
        return NumericColumn(str(data["name"]), float(data["mean"]), float(data["std"]), bool(data["indicator"]))
    if data["kind"] == "categorical":
        return CategoricalColumn(str(data["name"]), [str(c) for c in data["categories"]])
    raise ValueError(f"column kind must be numeric or categorical, found {data['kind']!r}")


def target_labels(examples: TableExamples) -> list[str]:
    """Each row's target as a class name (the form a classifier's classes take)."""
    return _labels(examples)


def _labels(examples: TableExamples) -> list[str]:
    if examples.targets is None:
        raise ValueError(f"{examples.source} was loaded without targets (labelled=False).")
    return [_category(t) for t in examples.targets]


class TargetEncoder:
    """Targets as model outputs: class ids over the sorted training labels for classification, or values
    standardized with the training mean and std for regression (``inverse`` gives back the original units)."""

    def __init__(self, task: str):
        if task not in TASKS:
            raise ConfigError([f"The task must be one of {', '.join(TASKS)}; got {task!r}."])
        self.task = task
        self.classes: list[str] | None = None
        self.mean: float | None = None
        self.std: float | None = None

    @property
    def outputs(self) -> int:
        """How many numbers the model predicts per row: one per class, or one for regression."""
        self._require_fitted()
        return len(self.classes) if self.classes is not None else 1

    def fit(self, examples: TableExamples) -> TargetEncoder:
        if self.task == "classification":
            names = sorted(set(_labels(examples)))
            if len(names) < 2:
                raise DataError(f"{examples.source}: every row has the target '{names[0]}'. "
                                "A classifier needs at least two classes; found one.")
            self.classes = names
        else:
            self.mean, self.std = _mean_and_std(self._numbers(examples))
        return self

    def encode(self, examples: TableExamples) -> np.ndarray:
        """Class ids (int64) or standardized values (float32) of the examples' targets."""
        self._require_fitted()
        if self.classes is not None:
            labels = _labels(examples)
            ids = {name: i for i, name in enumerate(self.classes)}
            unseen = [i for i, label in enumerate(labels) if label not in ids]
            if unseen:
                names = sorted({labels[i] for i in unseen})
                rows = "; ".join(examples.locations[i] for i in unseen[:MAX_LISTED])
                raise DataError(f"{examples.source}: target values not in the training data: {', '.join(names)} "
                                f"({rows}{' ...' if len(unseen) > MAX_LISTED else ''}). "
                                f"Training classes are: {', '.join(self.classes)}.")
            return np.array([ids[label] for label in labels], dtype=np.int64)
        return ((self._numbers(examples) - self.mean) / self.std).astype(np.float32)

    def inverse(self, encoded: Sequence[float] | Sequence[int] | np.ndarray) -> np.ndarray:
        """Model outputs back in the targets' terms: class names for class ids, original units for regression."""
        self._require_fitted()
        encoded = np.asarray(encoded)
        if self.classes is not None:
            return np.asarray(self.classes, dtype=object)[encoded.astype(np.int64)]
        return encoded.astype(np.float64) * self.std + self.mean

    def to_dict(self) -> dict[str, Any]:
        self._require_fitted()
        if self.classes is not None:
            return {"format": FORMAT_VERSION, "task": self.task, "classes": list(self.classes)}
        return {"format": FORMAT_VERSION, "task": self.task, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetEncoder:
        try:
            _check_format(data)
            encoder = cls(str(data["task"]))
            if encoder.task == "classification":
                encoder.classes = [str(c) for c in data["classes"]]
            else:
                encoder.mean, encoder.std = float(data["mean"]), float(data["std"])
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ModelError(f"The saved target encoder is not readable ({type(exc).__name__}: {exc}).") from exc
        return encoder

    def _numbers(self, examples: TableExamples) -> np.ndarray:
        if examples.targets is None:
            raise ValueError(f"{examples.source} was loaded without targets (labelled=False).")
        values = [_number(t) for t in examples.targets]
        bad = [(i, examples.target_column or "target", examples.targets[i])
               for i, v in enumerate(values) if v is None]
        if bad:
            raise _not_numbers(bad, examples.source, examples.locations, "the regression target")
        return np.asarray(values, dtype=np.float64)

    def _require_fitted(self) -> None:
        if self.classes is None and self.mean is None:
            raise ValueError("This TargetEncoder is not fitted; call fit() or from_dict() first.")


def split_table(examples: TableExamples, val_fraction: float, seed: int,
                task: str) -> tuple[TableExamples, TableExamples]:
    """Train and validation rows: stratified by class for classification (text.py's split, with the same
    guarantees and errors), a seeded random split for regression. Both keep at least one row on each side."""
    if task == "classification":
        # split the row numbers, labelled with each row's class, then take those rows
        rows = TextExamples([str(i) for i in range(len(examples))], _labels(examples), examples.locations,
                            examples.source)
        train, val = stratified_split(rows, val_fraction, seed)
        return examples.subset([int(i) for i in train.texts]), examples.subset([int(i) for i in val.texts])
    if task != "regression":
        raise ConfigError([f"The task must be one of {', '.join(TASKS)}; got {task!r}."])
    if len(examples) < 2:
        raise DataError(f"{examples.source}: too few rows to split off a validation set: found {len(examples)}, "
                        "expected at least 2. Add rows or give a validation file with --val.")
    order = np.random.default_rng(seed).permutation(len(examples))
    n_val = min(len(examples) - 1, max(1, round(len(examples) * val_fraction)))
    return examples.subset(sorted(order[n_val:].tolist())), examples.subset(sorted(order[:n_val].tolist()))


def _plain(value: Any) -> Any:
    """A cell as JSON keeps it: numpy scalars become Python numbers."""
    return value.item() if isinstance(value, np.generic) else value
