from collections import Counter

import pytest
from tests.conftest import write_csv

from tuneloop.data.files import read_table
from tuneloop.data.text import TextExamples, find_column, load_text_examples, stratified_split
from tuneloop.errors import DataError


def examples(labels: list[str]) -> TextExamples:
    return TextExamples([f"t{i}" for i in range(len(labels))], labels, [f"line {i + 2}" for i in range(len(labels))],
                        "d.csv")


def test_columns_found_by_common_names_case_insensitively(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["Review", "Sentiment"], [["fine", "pos"], ["bad", "neg"]])
    loaded = load_text_examples(path)
    assert loaded.texts == ["fine", "bad"] and loaded.labels == ["pos", "neg"]


def test_explicit_column_names_win(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "body", "label", "y"], [["a", "b", "l1", "y1"]])
    loaded = load_text_examples(path, "body", "y")
    assert loaded.texts == ["b"] and loaded.labels == ["y1"]


def test_numeric_labels_become_text(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0.0}\n')
    assert load_text_examples(path).labels == ["1", "0"]


def test_stratified_split_keeps_class_shares_and_is_seeded():
    data = examples(["a"] * 80 + ["b"] * 20)
    train, val = stratified_split(data, 0.25, seed=1)
    assert Counter(val.labels) == {"a": 20, "b": 5}
    assert Counter(train.labels) == {"a": 60, "b": 15}
    assert set(train.texts).isdisjoint(val.texts)
    assert stratified_split(data, 0.25, seed=1)[1].texts == val.texts
    assert stratified_split(data, 0.25, seed=2)[1].texts != val.texts


def test_split_keeps_one_example_of_a_small_class_on_each_side():
    train, val = stratified_split(examples(["a"] * 50 + ["b"] * 2), 0.1, seed=0)
    assert Counter(train.labels)["b"] == 1 and Counter(val.labels)["b"] == 1


def test_missing_named_column_lists_existing(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [["a", "b"]])
    with pytest.raises(DataError, match=r"no column named 'txt'.*The file has columns: text, label"):
        find_column(read_table(path), "txt", (), "text", "--text-col")


def test_fingerprint_changes_with_labels():
    assert examples(["a", "b"]).fingerprint() != examples(["b", "a"]).fingerprint()
