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


def test_a_knob_the_kind_of_data_does_not_read_is_refused_and_named():
    from tuneloop.config import Recipe
    from tuneloop.tasks import TASKS, check_knobs

    for task in TASKS.values():
        check_knobs(task, Recipe())  # the defaults are never refused
    with pytest.raises(ConfigError) as refused:
        check_knobs(TASKS["tabular"], Recipe(lora_rank=4, trainable_layers=2, learning_rate=1e-3))
    problems = refused.value.problems
    assert len(problems) == 2, "the rate applies to every kind; LoRA and the depth do not apply to a table"
    assert problems[0].startswith("The 'lora_rank' parameter does not apply to tabular data")
    assert "it applies to instructions and text" in problems[0] and "Got 4" in problems[0]
    assert "it applies to image and text" in problems[1]
    check_knobs(TASKS["image"], Recipe(trainable_layers=2, mixup=0.2))


def test_the_command_line_refuses_lora_on_a_table_before_writing_anything(tmp_path):
    from tests.conftest import run_tuneloop

    rows = [[str(i), str(i % 3), "ab"[i % 2]] for i in range(30)]
    path = write_csv(tmp_path / "t.csv", ["x", "z", "label"], rows)
    done = run_tuneloop("fit", str(path), "--lora-rank", "4", "--workspace", str(tmp_path / "ws"), "--quiet")
    assert done.returncode == 2 and "'lora_rank' parameter does not apply to tabular data" in done.stderr
    assert not (tmp_path / "ws").exists()


def test_every_kind_inherits_the_defaults_that_others_read_without_asking():
    from tuneloop.tasks import TASKS, KindDefaults

    assert all(issubclass(task, KindDefaults) for task in TASKS.values())
    assert [m for m, t in TASKS.items() if t.predicts_text] == ["instructions"]
