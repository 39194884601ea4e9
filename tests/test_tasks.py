"""Which task a data file is for, when the user does not say."""

from __future__ import annotations

import pytest
from tests.conftest import write_csv

from tuneloop.errors import ConfigError
from tuneloop.tasks import modality_of


@pytest.mark.parametrize(("header", "row", "expected"), [
    (["text", "label"], ["good film", "pos"], "text"),
    (["review_text", "label"], ["x", "pos"], "text"),  # a common name as a word of the column's name
    (["body", "y"], ["a", "b"], "text"),
    (["notes", "label"], ["the shipment arrived two days late", "late"], "text"),  # a column of sentences
    (["mean texture", "target"], ["1.5", "0"], "tabular"),  # 'texture' is not 'text'
    (["color", "size", "label"], ["red", "large", "a"], "tabular"),
])
def test_modality_from_the_columns(tmp_path, header, row, expected):
    path = write_csv(tmp_path / "d.csv", header, [row])
    assert modality_of(path) == expected


def test_modality_as_requested_and_a_bad_request_is_an_error(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [["good film", "pos"]])
    assert modality_of(path, "tabular") == "tabular"
    assert modality_of(path, "auto", text_col="text") == "text"
    with pytest.raises(ConfigError, match="'task'"):
        modality_of(path, "images")
