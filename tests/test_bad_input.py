"""Every bad input gets an error naming the file, row and column where relevant, exits with status 2,
and leaves nothing in the workspace."""

from __future__ import annotations

import pytest
from tests.conftest import sentiment_rows, write_csv

from tuneloop.cli import main


def fit(capsys, workspace, *args: str) -> str:
    code = main(["fit", *map(str, args), "--workspace", str(workspace), "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not workspace.exists(), "bad input must leave nothing in the workspace"
    assert err.startswith("tuneloop fit: error: ")
    assert "Traceback" not in err
    return err


def test_missing_file(capsys, workspace, tmp_path):
    err = fit(capsys, workspace, tmp_path / "nope.csv")
    assert "nope.csv: no such file." in err


def test_a_folder_is_read_as_images_and_an_empty_one_says_what_it_expected(capsys, workspace, tmp_path):
    assert "expected one subfolder of images per class" in fit(capsys, workspace, tmp_path)


def test_corrupt_parquet(capsys, workspace, tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"this is not parquet at all")
    assert "d.parquet: could not be read as Parquet" in fit(capsys, workspace, path)


def test_wrong_encoding_names_line_and_byte(capsys, workspace, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nfine,pos\ncaf\u00e9 au lait,neg\n".encode("latin-1"))
    err = fit(capsys, workspace, path)
    assert "latin1.csv, line 3: expected UTF-8 text, found byte 0xe9" in err


def test_empty_file(capsys, workspace, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    assert "empty.csv: the file is empty." in fit(capsys, workspace, path)


def test_header_without_rows(capsys, workspace, tmp_path):
    path = write_csv(tmp_path / "head.csv", ["text", "label"], [])
    assert "head.csv: the file has column names (text, label) but no data rows." in fit(capsys, workspace, path)


def test_missing_column_lists_existing_ones(capsys, workspace, tmp_path):
    path = write_csv(tmp_path / "d.csv", ["sentence_text", "label"], [["a", "x"]])
    err = fit(capsys, workspace, path)
    assert "found no text column" in err and "The file has columns: sentence_text, label" in err
    assert "--text-col" in err


def test_named_column_that_does_not_exist(capsys, workspace, tmp_path, toy_csv):
    err = fit(capsys, workspace, toy_csv, "--label-col", "topic")
    assert "no column named 'topic' for the label. The file has columns: text, label." in err


def test_empty_texts_name_row_and_column(capsys, workspace, tmp_path):
    rows = sentiment_rows(5) + [["   ", "pos"], ["", "neg"]]
    path = write_csv(tmp_path / "d.csv", ["text", "label"], rows)
    err = fit(capsys, workspace, path)
    assert "d.csv, line 12, column 'text'; " in err and "line 13, column 'text'" in err
    assert "the text is empty" in err and "2 of 12 rows" in err


def test_missing_label(capsys, workspace, tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], sentiment_rows(3) + [["words", ""]])
    assert "d.csv, line 8, column 'label': the label is missing" in fit(capsys, workspace, path)


def test_single_class(capsys, workspace, tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [["a", "x"], ["b", "x"], ["c", "x"]])
    err = fit(capsys, workspace, path)
    assert "every row has the label 'x'" in err and "at least two classes" in err


def test_validation_labels_unseen_in_training(capsys, workspace, tmp_path, toy_csv):
    val = write_csv(tmp_path / "val.csv", ["text", "label"], [["good", "pos"], ["meh", "neutral"]])
    err = fit(capsys, workspace, toy_csv, "--val", val)
    assert "val.csv: validation labels not in the training data: neutral (line 3)" in err
    assert "Training labels are: neg, pos" in err


def test_too_few_examples_of_a_class_to_split(capsys, workspace, tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], sentiment_rows(5) + [["odd one", "rare"]])
    err = fit(capsys, workspace, path)
    assert "too few examples to split off a validation set: class 'rare' (line 12) has 1 example" in err
    assert "--val" in err


def test_every_bad_recipe_value_is_reported_at_once(capsys, workspace, toy_csv):
    err = fit(capsys, workspace, toy_csv, "--lr", "-1", "--dropout", "1.5")
    assert "2 problems" in err
    assert "'learning_rate' parameter must be a float in the range (0, 1]. Got -1.0" in err
    assert "'dropout' parameter must be a float in the range [0, 1). Got 1.5" in err


def test_model_folder_without_config(capsys, workspace, tmp_path, toy_csv):
    (tmp_path / "model").mkdir()
    err = fit(capsys, workspace, toy_csv, "--model", tmp_path / "model")
    assert "expected a Hugging Face model directory with config.json" in err


def test_model_folder_without_safetensors(capsys, workspace, tmp_path, toy_csv, tiny_model):
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    err = fit(capsys, workspace, toy_csv, "--model", folder)
    assert "expected weights in model.safetensors" in err and "safetensors only" in err


def test_unknown_run_for_predict(capsys, tmp_path, toy_csv):
    code = main(["predict", "nope", str(toy_csv), "-o", str(tmp_path / "out.csv"),
                 "--workspace", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and "no tuneloop workspace here" in err
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "none").exists()


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size"])
def test_non_numeric_flag_is_an_argparse_error(flag, toy_csv, workspace):
    with pytest.raises(SystemExit) as caught:
        main(["fit", str(toy_csv), flag, "many", "--workspace", str(workspace)])
    assert caught.value.code == 2 and not workspace.exists()
