"""The examples a version keeps: bounded stratified samples, a per-class split, joining two sets, and saving
them exactly for texts, table rows and images."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from tuneloop.continual.samples import (
    bounded_sample,
    class_labels,
    concat,
    load_examples,
    save_examples,
    split_off,
    stratified_indices,
)
from tuneloop.data.images import ImageExamples
from tuneloop.data.tabular import TableExamples
from tuneloop.data.text import TextExamples
from tuneloop.errors import ModelError


def labels_of(counts: dict[str, int], seed: int = 0) -> list[str]:
    """Class names with the given counts, shuffled."""
    labels = [name for name, count in counts.items() for _ in range(count)]
    return [labels[i] for i in np.random.default_rng(seed).permutation(len(labels))]


def texts(labels: list[str] | None, n: int | None = None, source: str = "train.csv") -> TextExamples:
    n = len(labels) if labels is not None else n
    return TextExamples([f"text {i}" for i in range(n)], labels, [f"line {i + 2}" for i in range(n)], source)


def images(labels: list[str] | None, n: int | None = None, size: int = 4, source: str = "images") -> ImageExamples:
    n = len(labels) if labels is not None else n
    pixels = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return ImageExamples(pixels, labels, [f"img/{i}.png" for i in range(n)], source)


def table(n: int = 6, source: str = "rows.csv") -> TableExamples:
    columns = {
        "age": [20 + i for i in range(n)],
        "income": [1000.5 * (i + 1) for i in range(n)],
        "city": [("Paris", "Lyon", "Nice")[i % 3] for i in range(n)],
        "mixed": [i if i % 2 else f"code-{i}" for i in range(n)],
    }
    targets = [("yes", "no")[i % 2] for i in range(n)]
    return TableExamples(columns, targets, [f"line {i + 2}" for i in range(n)], source, "bought")


# ---------------------------------------------------------------------------------------------------------------------
# stratified_indices


def test_all_examples_are_kept_when_there_are_no_more_than_the_limit():
    assert stratified_indices(labels_of({"a": 3, "b": 2}), 5, 5, seed=0).tolist() == [0, 1, 2, 3, 4]
    assert stratified_indices(None, 4, 10, seed=0).tolist() == [0, 1, 2, 3]


def test_class_shares_are_kept_by_largest_remainder():
    labels = labels_of({"a": 50, "b": 30, "c": 20})
    chosen = stratified_indices(labels, 100, 10, seed=0)
    assert Counter(labels[i] for i in chosen) == {"a": 5, "b": 3, "c": 2}

    labels = labels_of({"a": 45, "b": 35, "c": 20})  # exact shares 4.5, 3.5, 2.0
    chosen = stratified_indices(labels, 100, 10, seed=0)
    counts = Counter(labels[i] for i in chosen)
    assert sum(counts.values()) == 10
    assert counts["c"] == 2
    assert (counts["a"], counts["b"]) in ((5, 3), (4, 4)), "the tie of remainders goes to either class"

    labels = labels_of({"a": 67, "b": 23, "c": 10})  # exact shares 6.7, 2.3, 1.0: a gets the one left
    counts = Counter(labels[i] for i in stratified_indices(labels, 100, 10, seed=0))
    assert counts == {"a": 7, "b": 2, "c": 1}


def test_a_rare_class_is_kept_at_least_once_when_the_limit_allows():
    labels = labels_of({"common": 990, "rare1": 5, "rare2": 5})
    chosen = stratified_indices(labels, len(labels), 20, seed=0)
    counts = Counter(labels[i] for i in chosen)
    assert len(chosen) == 20
    assert counts["rare1"] >= 1 and counts["rare2"] >= 1


def test_with_more_classes_than_the_limit_the_limit_still_holds():
    labels = labels_of({f"class{i}": 2 for i in range(10)})
    chosen = stratified_indices(labels, len(labels), 4, seed=0)
    assert len(chosen) == 4
    assert len(set(chosen.tolist())) == 4


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 13, 50, 199])
@pytest.mark.parametrize("counts", [{"a": 100, "b": 100}, {"a": 180, "b": 15, "c": 4, "d": 1},
                                    {f"c{i}": 5 + 3 * i for i in range(12)}])
def test_a_sample_has_exactly_the_limit_of_distinct_sorted_indices(counts, limit):
    labels = labels_of(counts)
    n = len(labels)
    chosen = stratified_indices(labels, n, limit, seed=1)
    expected = min(limit, n)
    assert len(chosen) == expected
    assert len(set(chosen.tolist())) == expected
    assert np.all(np.diff(chosen) > 0)
    assert chosen.min() >= 0 and chosen.max() < n
    if limit >= len(counts) and limit < n:
        assert set(labels[i] for i in chosen) == set(counts), "every class at least once"


def test_without_labels_it_is_a_plain_bounded_draw():
    chosen = stratified_indices(None, 100, 10, seed=0)
    assert len(chosen) == 10 and len(set(chosen.tolist())) == 10
    assert np.all(np.diff(chosen) > 0)


def test_the_sample_is_the_same_for_a_seed_and_differs_between_seeds():
    labels = labels_of({"a": 300, "b": 200})
    first = stratified_indices(labels, 500, 50, seed=7)
    assert np.array_equal(first, stratified_indices(labels, 500, 50, seed=7))
    assert not np.array_equal(first, stratified_indices(labels, 500, 50, seed=8))
    assert np.array_equal(stratified_indices(None, 500, 50, seed=7), stratified_indices(None, 500, 50, seed=7))


def test_bounded_sample_subsets_the_examples_by_class():
    examples = texts(labels_of({"pos": 60, "neg": 40}))
    sample = bounded_sample(examples, 10, seed=0)
    assert isinstance(sample, TextExamples)
    assert len(sample) == 10
    assert Counter(sample.labels) == {"pos": 6, "neg": 4}
    for text, label, location in zip(sample.texts, sample.labels, sample.locations, strict=True):
        i = examples.texts.index(text)
        assert (examples.labels[i], examples.locations[i]) == (label, location)


def test_bounded_sample_of_a_regressors_rows_needs_no_classes():
    rows = TableExamples({"x": list(range(30))}, [i * 0.5 for i in range(30)], [f"line {i}" for i in range(30)],
                         "rows.csv", "y")
    sample = bounded_sample(rows, 8, seed=0, classification=False)
    assert len(sample) == 8
    assert all(target == x * 0.5 for x, target in zip(sample.columns["x"], sample.targets, strict=True))


def test_class_labels_of_table_rows_are_their_targets_as_class_names():
    rows = TableExamples({"x": [1, 2, 3]}, [1, 0, 1], ["line 2", "line 3", "line 4"], "rows.csv", "y")
    assert class_labels(rows) == ["1", "0", "1"]
    assert class_labels(rows, classification=False) is None


def test_class_labels_of_unlabelled_examples_is_an_error_naming_the_source():
    with pytest.raises(ValueError, match="new.csv"):
        class_labels(texts(None, n=3, source="new.csv"))


# ---------------------------------------------------------------------------------------------------------------------
# split_off


def test_split_off_holds_out_about_the_fraction_of_each_class():
    examples = texts(labels_of({"a": 60, "b": 40}))
    rest, held = split_off(examples, 0.25, seed=0)
    assert Counter(held.labels) == {"a": 15, "b": 10}
    assert Counter(rest.labels) == {"a": 45, "b": 30}
    assert sorted(rest.texts + held.texts) == sorted(examples.texts)


def test_split_off_keeps_every_class_with_two_or_more_on_each_side():
    examples = texts(labels_of({"big": 100, "pair": 2, "few": 3, "single": 1}))
    for fraction in (0.01, 0.2, 0.5, 0.99):
        rest, held = split_off(examples, fraction, seed=0)
        for name in ("big", "pair", "few"):
            assert name in rest.labels and name in held.labels, (fraction, name)
        assert len(rest) + len(held) == len(examples)
        assert not set(rest.locations) & set(held.locations)


def test_split_off_is_the_same_for_a_seed():
    examples = texts(labels_of({"a": 30, "b": 30}))
    first_rest, first_held = split_off(examples, 0.3, seed=4)
    second_rest, second_held = split_off(examples, 0.3, seed=4)
    assert first_rest == second_rest and first_held == second_held


def test_split_off_without_classes_is_a_plain_random_split():
    rows = TableExamples({"x": list(range(20))}, [i * 1.5 for i in range(20)], [f"line {i}" for i in range(20)],
                         "rows.csv", "y")
    rest, held = split_off(rows, 0.25, seed=0, classification=False)
    assert (len(rest), len(held)) == (15, 5)
    assert sorted(rest.columns["x"] + held.columns["x"]) == list(range(20))


def test_split_off_works_on_images():
    examples = images(labels_of({"cat": 6, "dog": 4}))
    rest, held = split_off(examples, 0.5, seed=0)
    assert isinstance(held, ImageExamples)
    assert Counter(held.labels) == {"cat": 3, "dog": 2}
    assert held.pixels.shape == (5, 3, 4, 4)
    for i, location in enumerate(held.locations):
        assert torch.equal(held.pixels[i], examples.pixels[examples.locations.index(location)])


# ---------------------------------------------------------------------------------------------------------------------
# concat


def test_concat_joins_texts_in_order_and_names_both_sources():
    first, second = texts(["a", "b"], source="old.csv"), texts(["b"], source="new.csv")
    joined = concat(first, second)
    assert joined.texts == first.texts + second.texts
    assert joined.labels == ["a", "b", "b"]
    assert joined.locations == first.locations + second.locations
    assert joined.source == "old.csv + new.csv"
    assert concat(first, texts(["c"], source="old.csv")).source == "old.csv"


def test_concat_with_an_unlabelled_side_has_no_labels():
    assert concat(texts(["a"]), texts(None, n=2)).labels is None


def test_concat_joins_images_and_table_rows():
    joined = concat(images(["a", "b"]), images(["c"]))
    assert joined.pixels.shape == (3, 3, 4, 4) and joined.pixels.dtype == torch.uint8
    assert joined.labels == ["a", "b", "c"]

    rows = concat(table(4), table(2))
    assert len(rows) == 6
    assert rows.columns["age"] == [20, 21, 22, 23, 20, 21]
    assert rows.targets == ["yes", "no", "yes", "no", "yes", "no"]
    assert rows.target_column == "bought"


def test_concat_of_different_kinds_is_refused():
    with pytest.raises(TypeError, match="TextExamples with ImageExamples"):
        concat(texts(["a"]), images(["a"]))
    with pytest.raises(TypeError, match="TableExamples with TextExamples"):
        concat(table(), texts(["a"]))


def test_concat_of_images_of_different_sizes_is_refused():
    with pytest.raises(ValueError, match="resize"):
        concat(images(["a"], size=4), images(["a"], size=8))


def test_concat_of_tables_with_different_columns_names_them():
    other = TableExamples({"age": [1], "height": [2.0]}, ["yes"], ["line 2"], "other.csv", "bought")
    with pytest.raises(ValueError, match="city, height, income, mixed"):
        concat(table(), other)


# ---------------------------------------------------------------------------------------------------------------------
# save_examples / load_examples


def test_texts_round_trip_exactly(tmp_path):
    examples = TextExamples(["héllo, \"world\"\n", "", "日本語 text"], ["pos", "neg", "pos"],
                            ["line 2", "line 3", "line 4"], "reviews.csv")
    save_examples(examples, tmp_path, "replay")
    assert load_examples(tmp_path, "replay") == examples
    unlabelled = texts(None, n=2)
    save_examples(unlabelled, tmp_path, "new")
    assert load_examples(tmp_path, "new") == unlabelled


def test_table_rows_round_trip_exactly_with_mixed_cells_and_the_target_column(tmp_path):
    examples = table(6)
    save_examples(examples, tmp_path, "holdout")
    loaded = load_examples(tmp_path, "holdout")
    assert loaded == examples
    assert loaded.target_column == "bought"
    assert list(loaded.columns) == ["age", "income", "city", "mixed"]
    for name, values in examples.columns.items():
        assert [type(v) for v in loaded.columns[name]] == [type(v) for v in values], name


def test_table_rows_with_numpy_cells_and_numeric_targets_load_as_the_same_numbers(tmp_path):
    examples = TableExamples({"n": [np.int64(3), np.int64(-1)], "f": [np.float64(0.25), np.float64(1e-9)]},
                             [np.float64(1.5), np.float64(-2.0)], ["line 2", "line 3"], "rows.csv", "price")
    save_examples(examples, tmp_path, "replay")
    loaded = load_examples(tmp_path, "replay")
    assert loaded.columns == {"n": [3, -1], "f": [0.25, 1e-9]}
    assert loaded.targets == [1.5, -2.0]
    assert loaded.target_column == "price"


def test_unlabelled_table_rows_round_trip(tmp_path):
    examples = TableExamples({"x": [1, 2]}, None, ["line 2", "line 3"], "new.csv", None)
    save_examples(examples, tmp_path, "new")
    assert load_examples(tmp_path, "new") == examples


def test_images_round_trip_exactly(tmp_path):
    examples = images(["cat", "dog", "cat"], size=5)
    save_examples(examples, tmp_path, "holdout")
    assert (tmp_path / "holdout.safetensors").exists()
    loaded = load_examples(tmp_path, "holdout")
    assert loaded.pixels.dtype == torch.uint8
    assert torch.equal(loaded.pixels, examples.pixels)
    assert (loaded.labels, loaded.locations, loaded.source) == (examples.labels, examples.locations, examples.source)


def test_a_sliced_image_sample_saves(tmp_path):
    examples = images(["a", "b", "c", "d"]).subset([3, 1])
    save_examples(examples, tmp_path, "replay")
    assert torch.equal(load_examples(tmp_path, "replay").pixels, examples.pixels)


def test_missing_or_damaged_kept_examples_are_a_model_error_naming_the_folder(tmp_path):
    with pytest.raises(ModelError, match="replay examples are not readable"):
        load_examples(tmp_path, "replay")
    (tmp_path / "holdout.json").write_text("{not json")
    with pytest.raises(ModelError, match=str(tmp_path)):
        load_examples(tmp_path, "holdout")
    (tmp_path / "images.json").write_text(json.dumps({"kind": "image", "labels": None, "locations": [],
                                                      "source": "x"}))
    with pytest.raises(ModelError, match="images examples are not readable"):
        load_examples(tmp_path, "images")
