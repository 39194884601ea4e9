import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneloop.data.files import read_table, write_table
from tuneloop.errors import DataError


def test_csv_locations_count_lines_including_quoted_newlines(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"two\nlines",a\n\nthird,b\n', encoding="utf-8")
    table = read_table(path)
    assert table.columns == {"text": ["two\nlines", "third"], "label": ["a", "b"]}
    assert table.locations == ["line 2", "line 5"]


def test_jsonl_and_parquet(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "x", "label": 1}\n\n{"text": "y", "label": 2}\n')
    table = read_table(jsonl)
    assert table.columns["label"] == [1, 2] and table.locations == ["line 1", "line 3"]
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["x", "y"], "label": ["a", "b"]}), parquet)
    assert read_table(parquet).locations == ["row 1", "row 2"]


def test_ragged_csv_row_is_named(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nok,a\ntoo,many,fields\n")
    with pytest.raises(DataError, match=r"d.csv, line 3: expected 2 fields as in the header, found 3"):
        read_table(path)


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "x"}\n{"text": \n')
    with pytest.raises(DataError, match=r"d.jsonl, line 2: expected one JSON object per line"):
        read_table(path)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "d.xlsx"
    path.write_bytes(b"x")
    with pytest.raises(DataError, match=r"expected a file ending in one of .*found '.xlsx'"):
        read_table(path)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_write_then_read_round_trip(tmp_path, suffix):
    columns = {"text": ["a, b", "c\td"], "p": [0.25, 0.75]}
    path = tmp_path / f"out{suffix}"
    write_table(path, columns)
    back = read_table(path).columns
    assert back["text"] == columns["text"]
    assert [float(v) for v in back["p"]] == columns["p"]
    assert not list(tmp_path.glob(".*partial"))


def test_write_jsonl_is_one_object_per_line(tmp_path):
    path = tmp_path / "o.jsonl"
    write_table(path, {"a": [1, 2]})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}, {"a": 2}]
