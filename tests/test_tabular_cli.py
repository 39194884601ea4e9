"""Tables end to end through the command line: classification on scikit-learn's bundled wine and breast
cancer data, regression on its diabetes data (all BSD-licensed with scikit-learn; wine and breast cancer
from the UCI repository, diabetes from Efron et al. 2004)."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pandas
import pytest
from tests.conftest import run_tuneloop

from tuneloop import api
from tuneloop.config import Recipe

sklearn_datasets = pytest.importorskip("sklearn.datasets")

FAST = ["--epochs", "30", "--lr", "1e-3", "--patience", "5", "--quiet"]


def tuneloop(*args: str) -> subprocess.CompletedProcess:
    return run_tuneloop(*args)


@pytest.fixture(scope="module")
def wine(tmp_path_factory) -> tuple[Path, Path]:
    """The wine table (178 rows, 13 numeric columns, 3 cultivars) with a class-name target, and its first
    20 rows without the target."""
    folder = tmp_path_factory.mktemp("wine")
    frame = sklearn_datasets.load_wine(as_frame=True).frame
    frame["target"] = frame["target"].map({0: "cultivar_a", 1: "cultivar_b", 2: "cultivar_c"})
    frame.to_csv(folder / "wine.csv", index=False)
    frame.drop(columns=["target"]).head(20).to_csv(folder / "new.csv", index=False)
    return folder / "wine.csv", folder / "new.csv"


def test_fit_predict_evaluate_a_table_from_the_command_line(wine, tmp_path):
    data, new = wine
    workspace = str(tmp_path / "ws")
    fitted = tuneloop("fit", str(data), "--workspace", workspace, "--json", *FAST)
    assert fitted.returncode == 0, fitted.stderr
    result = json.loads(fitted.stdout)
    assert result["metrics"]["val_accuracy"] > 0.9, result["metrics"]  # majority class is 0.40
    assert result["metrics"]["cached_inputs"] is None
    assert 0.9 < result["metrics"]["val_roc_auc"] <= 1.0

    out = tmp_path / "predicted.csv"
    predicted = tuneloop("predict", "latest", str(new), "-o", str(out), "--workspace", workspace)
    assert predicted.returncode == 0, predicted.stderr
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20 and all(r["predicted_label"] == "cultivar_a" for r in rows), "the first rows are class a"
    in_memory = api.load_run("latest", workspace).predict(new)
    assert [r["predicted_label"] for r in rows] == in_memory.labels

    evaluated = tuneloop("evaluate", "latest", str(data), "--workspace", workspace, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["n"] == 178 and report["metrics"]["accuracy"] > 0.9
    assert report["metrics"]["roc_auc"] >= report["metrics"]["accuracy"] - 0.05, "macro one-vs-rest ROC AUC"
    assert report["classes"] == ["cultivar_a", "cultivar_b", "cultivar_c"]


def test_a_binary_table_with_integer_classes_trains_through_the_api(tmp_path):
    frame = sklearn_datasets.load_breast_cancer(as_frame=True).frame  # target 0/1: two classes
    frame.to_csv(tmp_path / "cancer.csv", index=False)
    run = api.fit(tmp_path / "cancer.csv", workspace=tmp_path / "ws", epochs=20, learning_rate=1e-3, patience=5)
    assert run.classes == ["0", "1"]
    assert run.metrics["val_accuracy"] > 0.9  # majority class is 0.63


def test_a_bad_cell_at_prediction_names_file_line_and_column_and_writes_nothing(wine, tmp_path):
    data, _ = wine
    workspace = str(tmp_path / "ws")
    assert tuneloop("fit", str(data), "--workspace", workspace, "--epochs", "2", "--quiet").returncode == 0
    bad = tmp_path / "bad.csv"
    lines = data.read_text().splitlines()
    header, row = lines[0], lines[1].split(",")
    row[1] = "lots"  # malic_acid
    bad.write_text(header.rsplit(",", 1)[0] + "\n" + ",".join(row[:-1]) + "\n")
    out = tmp_path / "out.csv"
    predicted = tuneloop("predict", "latest", str(bad), "-o", str(out), "--workspace", workspace)
    assert predicted.returncode == 2
    assert "bad.csv, line 2, column 'malic_acid'" in predicted.stderr and "'lots'" in predicted.stderr
    assert not out.exists()


def test_table_specific_mistakes_are_reported_before_anything_is_written(wine, tmp_path):
    data, _ = wine
    workspace = tmp_path / "ws"
    with_model = tuneloop("fit", str(data), "--model", str(tmp_path), "--workspace", str(workspace))
    assert with_model.returncode == 2 and "train an MLP from scratch" in with_model.stderr
    wrong_metric = tuneloop("fit", str(data), "--metric", "rmse", "--workspace", str(workspace))
    assert wrong_metric.returncode == 2
    assert "'metric' parameter of a classification task must be one of" in wrong_metric.stderr
    assert not workspace.exists()


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory) -> tuple[Path, Path]:
    """The diabetes table (442 rows, 10 numeric columns, a disease-progression score 25..346), and its
    first 30 rows without the target."""
    folder = tmp_path_factory.mktemp("diabetes")
    frame = sklearn_datasets.load_diabetes(as_frame=True, scaled=False).frame
    frame.to_csv(folder / "diabetes.csv", index=False)
    frame.drop(columns=["target"]).head(30).to_csv(folder / "new.csv", index=False)
    return folder / "diabetes.csv", folder / "new.csv"


def test_regression_fit_evaluate_predict_from_the_command_line(diabetes, tmp_path):
    data, new = diabetes
    workspace = str(tmp_path / "ws")
    fitted = tuneloop("fit", str(data), "--workspace", workspace, "--json", *FAST)
    assert fitted.returncode == 0, fitted.stderr
    metrics = json.loads(fitted.stdout)["metrics"]
    assert set(metrics) >= {"val_rmse", "val_mae", "val_r2", "mean_predictor_rmse"}
    assert "val_accuracy" not in metrics
    # Learned something real: a clearly lower error than always predicting the training mean.
    assert metrics["val_rmse"] < 0.9 * metrics["mean_predictor_rmse"] and metrics["val_r2"] > 0.2
    recipe = json.loads(fitted.stdout)["recipe"]
    assert recipe["metric"] == "rmse", "metric 'auto' is RMSE for a regressor"

    evaluated = tuneloop("evaluate", "latest", str(data), "--workspace", workspace, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    scores = json.loads(evaluated.stdout)["metrics"]
    assert set(scores) == {"mae", "rmse", "r2"} and scores["r2"] > 0.2
    # The same numbers as scikit-learn's on the same predictions (R² against the variance of the true values).
    from sklearn.metrics import mean_absolute_error, r2_score

    true = pandas.read_csv(data)["target"].to_numpy()
    features = tmp_path / "features.csv"
    pandas.read_csv(data).drop(columns=["target"]).to_csv(features, index=False)
    predicted = api.load_run("latest", workspace).predict(str(features)).values
    assert scores["r2"] == pytest.approx(r2_score(true, predicted), abs=1e-6)
    assert scores["mae"] == pytest.approx(mean_absolute_error(true, predicted), rel=1e-6)

    out = tmp_path / "out.csv"
    predicted = tuneloop("predict", "latest", str(new), "-o", str(out), "--workspace", workspace)
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.DictReader(out.open()))
    values = [float(r["predicted_value"]) for r in rows]
    assert len(values) == 30 and 25 <= min(values) and max(values) <= 346, "in the target's own units"

    shown = tuneloop("runs", "--workspace", workspace)
    assert "RMSE" in shown.stdout and "R²" in shown.stdout


def test_guided_tuning_of_a_table_makes_capacity_decisions_and_reports_them(wine, tmp_path):
    data, _ = wine
    workspace = tmp_path / "ws"
    tuned = tuneloop("tune", str(data), "--workspace", str(workspace), "--budget", "4trials", "--no-seed-check",
                     "--name", "wine", "--json")
    assert tuned.returncode == 0, tuned.stderr
    result = json.loads(tuned.stdout)
    trials = [t for t in result["trials"] if t["kind"] == "search"]
    assert trials[0]["recipe"]["hidden_layers"] == 1 and trials[0]["recipe"]["hidden_units"] == 64
    assert "MLP" in trials[0]["reason"]
    later = [t["reason"] for t in trials[1:]]
    assert later and all("->" in reason for reason in later), "each later trial says what changed and why"
    assert all(t["recipe"]["trainable_layers"] == trials[0]["recipe"]["trainable_layers"] for t in trials), \
        "no encoder knobs are moved for a table"
    assert result["best_metrics"]["val_accuracy"] > 0.9
    # 36 validation rows cannot tell MLPs apart: the final model is the chosen one trained on all 178 rows,
    # averaged with the chosen trial's own MLP (a second draw of the same recipe)
    (refit,) = [t for t in result["trials"] if t["kind"] == "refit"]
    (ensemble,) = [t for t in result["trials"] if t["kind"] == "ensemble"]
    assert ensemble["parent"] == refit["number"] and result["best_run"] == ensemble["run"]
    assert "all 178 labelled examples" in result["choice"]
    assert f"trial {refit['parent']}'s own model (the same recipe on the 142 training examples)" in result["choice"]
    report = tmp_path / "report.html"
    reported = tuneloop("report", "wine", "--workspace", str(workspace), "-o", str(report))
    assert reported.returncode == 0, reported.stderr
    assert "MLP" in report.read_text()


def test_task_text_on_a_table_asks_for_the_text_column(wine, tmp_path):
    data, _ = wine
    fitted = tuneloop("fit", str(data), "--task", "text", "--workspace", str(tmp_path / "ws"))
    assert fitted.returncode == 2 and "text" in fitted.stderr.lower()


@pytest.mark.parametrize("strategy", ["random", "grid", "bayes"])
def test_sampler_strategies_search_the_mlp_space_of_a_table(wine, tmp_path, strategy):
    data, _ = wine
    result = api.tune(data, workspace=tmp_path / "ws", budget="3trials", strategy=strategy, prune="none",
                      seed_check=False)
    recipes = [t.recipe for t in result.trials if t.kind == "search"]
    assert len(recipes) == 3
    assert len({(r.hidden_layers, r.hidden_units, r.learning_rate) for r in recipes}) == 3, "three different MLPs"
    assert all(r.trainable_layers == "all" and r.lora_rank == 0 for r in recipes), "no encoder knobs"
    if strategy == "grid":
        assert [r.hidden_layers for r in recipes] == [1, 1, 1] and recipes[0].learning_rate == pytest.approx(3e-4)


def test_guided_tuning_of_a_regression_table_scores_by_rmse(diabetes, tmp_path):
    data, _ = diabetes
    tuned = tuneloop("tune", str(data), "--budget", "3trials", "--no-seed-check", "--workspace", str(tmp_path / "ws"),
                     "--json", "--quiet")
    assert tuned.returncode == 0, tuned.stderr
    result = json.loads(tuned.stdout)
    completed = [t for t in result["trials"] if t["status"] == "completed" and t["kind"] == "search"]
    assert completed and all(t["value"] < 0 for t in completed), "minus the RMSE: higher is better"
    # 88 validation rows are too few for a regressor: the final MLP is chosen by its estimate (cross-validation
    # over every row where the folds fit) and trained on all of them, and it reports that estimate
    (refit,) = [t for t in result["trials"] if t["kind"] == "refit"]
    (ensemble,) = [t for t in result["trials"] if t["kind"] == "ensemble"]
    assert result["best_run"] == ensemble["run"] and ensemble["parent"] == refit["number"]
    assert result["best_metrics"]["val_rmse"] == pytest.approx(-refit["value"])
    assert refit["value"] >= max(t["value"] for t in completed) - 10, "an estimate of the same kind of model"
    assert result["trials"][0]["reason"].startswith("start with the cheapest capacity: an MLP")
    assert all(t["diagnosis"] for t in completed)
    report = tuneloop("report", result["study"], "--workspace", str(tmp_path / "ws"), "-o", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "r.html").read_text()
    assert "predicted against true values" in html and "val RMSE" in html


def test_a_table_fits_with_an_mlps_own_defaults_not_a_fine_tunes(diabetes, tmp_path):
    """Without recipe flags a table trains at an MLP's rate for many epochs stopped by validation: the text
    defaults (3 epochs at 5e-5) left diabetes at R² 0.16; flags still win."""
    data, _ = diabetes
    run = api.fit(data, workspace=tmp_path / "ws")
    assert (run.recipe.learning_rate, run.recipe.epochs, run.recipe.patience) == (1e-3, 100, 10)
    assert run.metrics["val_r2"] > 0.3, run.metrics
    flagged = api.fit(data, workspace=tmp_path / "ws", epochs=4)
    assert flagged.recipe.epochs == 4 and flagged.recipe.learning_rate == 1e-3
    given = api.fit(data, workspace=tmp_path / "ws", recipe=Recipe(epochs=2))
    assert given.recipe.learning_rate == Recipe().learning_rate, "a recipe given whole is taken as it is"
