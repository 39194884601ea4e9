"""fit -> runs -> evaluate -> predict through the command line, on the tiny model."""

from __future__ import annotations

import json

from tests.conftest import sentiment_rows, write_csv

from tuneloop.cli import main
from tuneloop.data.files import read_table


def run_cli(capsys, *args) -> dict:
    code = main([*map(str, args), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


def test_fit_evaluate_predict_runs(capsys, tiny_model, toy_csv, workspace, tmp_path):
    fitted = run_cli(capsys, "fit", toy_csv, "--model", tiny_model, "--workspace", workspace, "--epochs", "3",
                     "--lr", "2e-3", "--batch-size", "8")
    run_id = fitted["run"]
    assert fitted["metrics"]["epochs_run"] == 3 and len(fitted["history"]) == 3
    assert fitted["metrics"]["val_accuracy"] > 0.9
    artifact = workspace / "artifacts" / run_id
    expected = {"model.safetensors", "config.json", "tokenizer.json", "labels.json", "recipe.yaml", "metrics.json",
                "tuneloop-model.json"}
    assert expected <= {p.name for p in artifact.iterdir()}
    assert "learning_rate: 0.002" in (artifact / "recipe.yaml").read_text()

    listed = run_cli(capsys, "runs", "--workspace", workspace)["runs"]
    assert [(r["id"], r["status"]) for r in listed] == [(run_id, "completed")]

    test_file = write_csv(tmp_path / "test.csv", ["text", "label"], sentiment_rows(10, seed=5))
    report = run_cli(capsys, "evaluate", run_id[:12], test_file, "--workspace", workspace)
    assert report["n"] == 20 and report["classes"] == ["neg", "pos"]
    assert sum(map(sum, report["confusion_matrix"])) == 20
    assert report["metrics"]["accuracy"] > 0.9

    out = tmp_path / "predictions.jsonl"
    predicted = run_cli(capsys, "predict", "latest", test_file, "-o", out, "--workspace", workspace)
    assert predicted["n"] == 20
    table = read_table(out).columns
    assert table["text"] == [t for t, _ in sentiment_rows(10, seed=5)]
    for i in range(20):
        assert abs(table["prob_neg"][i] + table["prob_pos"][i] - 1) < 1e-4
        assert table["predicted_label"][i] == ("pos" if table["prob_pos"][i] > 0.5 else "neg")


def test_model_folder_works_as_run_reference(capsys, tiny_model, toy_csv, workspace, tmp_path):
    fitted = run_cli(capsys, "fit", toy_csv, "--model", tiny_model, "--workspace", workspace, "--epochs", "1")
    report = run_cli(capsys, "evaluate", fitted["path"], toy_csv, "--workspace", tmp_path / "elsewhere")
    assert report["n"] == 80


def test_recipe_file_and_flags(capsys, tiny_model, toy_csv, workspace, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 2\nschedule: cosine\ntrainable_layers: 0\nlearning_rate: 0.01\n")
    fitted = run_cli(capsys, "fit", toy_csv, "--model", tiny_model, "--workspace", workspace, "--recipe", recipe,
                     "--epochs", "1")
    assert fitted["recipe"]["schedule"] == "cosine" and fitted["recipe"]["epochs"] == 1
    assert fitted["recipe"]["trainable_layers"] == 0


def test_text_output_for_people(capsys, tiny_model, toy_csv, workspace):
    assert main(["fit", str(toy_csv), "--model", str(tiny_model), "--workspace", str(workspace),
                 "--epochs", "1"]) == 0
    captured = capsys.readouterr()
    assert "epoch 1: train loss" in captured.err
    assert "val accuracy" in captured.out and "majority class" in captured.out
    assert main(["evaluate", "latest", str(toy_csv), "--workspace", str(workspace)]) == 0
    assert "Confusion matrix" in capsys.readouterr().out
