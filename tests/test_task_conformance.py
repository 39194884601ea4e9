"""Every registered kind of data passes the same checks (as scikit-learn's ``check_estimator`` holds every estimator
to one contract): told apart from the others; one epoch, saved, loaded again, predicts the same; a killed fit
resumes and ends as an uninterrupted one; bad input exits with status 2 naming the file, row and column and
leaves nothing behind; register -> drift -> adapt -> gate runs. A new kind brings a case here or does not ship.

Data: the tiny random BERT of conftest.py on toy sentences; scikit-learn's bundled wine table and 8x8 digits
(BSD-licensed with scikit-learn; from the UCI repository), the digits as PNG files in class folders; statsmodels'
bundled US macroeconomic data (quarterly real GDP and CPI, 1959-2009, from the Federal Reserve Bank of St. Louis
and the Bureau of Labor Statistics: US government data in the public domain); for instructions, the wine table as
prompts (two of a wine's measurements) and completions (its cultivar), tuned on conftest.py's tiny random Llama.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import run_tuneloop, sentiment_rows, write_csv

from tuneloop import api
from tuneloop.continual.drift import drift
from tuneloop.continual.update import adapt
from tuneloop.continual.versions import promote, register
from tuneloop.data.images import write_image_folder
from tuneloop.tasks import TASKS, modality_of
from tuneloop.training.loop import Callback

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@dataclass(frozen=True)
class Case:
    """One kind's data: labelled training data, new labelled data of the same kind, a file with one bad cell and
    the words its error must contain (file, row, column), and what ``fit`` is given."""

    modality: str
    data: Path
    new: Path
    bad: Path
    bad_where: str
    fit: dict[str, Any]
    cli: list[str]


def text_case(root: Path, models: dict[str, Path]) -> Case:
    data = write_csv(root / "train.csv", ["text", "label"], sentiment_rows(24))
    new = write_csv(root / "new.csv", ["text", "label"], sentiment_rows(8, seed=1))
    bad = write_csv(root / "bad.csv", ["text", "label"], sentiment_rows(3) + [["some words", ""]])
    model = {"model": str(models["encoder"]), "batch_size": 8, "learning_rate": 2e-3}
    return Case("text", data, new, bad, "bad.csv, line 8, column 'label'", model,
                ["--model", str(models["encoder"])])


def table_case(root: Path, models: dict[str, Path]) -> Case:
    frame = sklearn_datasets.load_wine(as_frame=True).frame.sample(frac=1, random_state=0)
    frame["target"] = frame["target"].map({0: "a", 1: "b", 2: "c"})
    frame.iloc[:100].to_csv(root / "train.csv", index=False)
    frame.iloc[100:].to_csv(root / "new.csv", index=False)
    bad = frame.iloc[:6].copy()
    bad["target"] = bad["target"].astype(object)
    bad.iloc[1, bad.columns.get_loc("target")] = None
    bad.to_csv(root / "bad.csv", index=False)
    return Case("tabular", root / "train.csv", root / "new.csv", root / "bad.csv",
                "bad.csv, line 3, column 'target'", {"learning_rate": 1e-3, "batch_size": 16}, [])


def image_case(root: Path, models: dict[str, Path]) -> Case:
    digits = sklearn_datasets.load_digits()
    keep = [i for i in range(400) if digits.target[i] < 3]
    pixels = (digits.images[keep] * 255 / 16).round().astype(np.uint8)
    labels = [f"d{digits.target[i]}" for i in keep]
    write_image_folder(pixels[:90], labels[:90], root / "train")
    write_image_folder(pixels[90:], labels[90:], root / "new")
    images = sorted((root / "train").rglob("*.png"))[:4]
    with (root / "bad.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([[str(p), p.parent.name] for p in images[:2]] + [[str(root / "gone.png"), "d0"]])
    small_cnn = {"model": "small-cnn", "hidden_layers": 1, "hidden_units": 8, "learning_rate": 3e-3,
                 "batch_size": 16}
    return Case("image", root / "train", root / "new", root / "bad.csv", "bad.csv, line 4, column 'path'",
                small_cnn, ["--model", "small-cnn"])


def series_case(root: Path, models: dict[str, Path]) -> Case:
    macro = pytest.importorskip("statsmodels.datasets.macrodata").load_pandas().data
    quarters = [f"{int(y)}-{3 * int(q) - 2:02d}-01" for y, q in zip(macro.year, macro.quarter, strict=True)]
    rows = [[t, g, c] for t, g, c in zip(quarters, macro.realgdp, macro.cpi, strict=True)]
    data = write_csv(root / "train.csv", ["date", "realgdp", "cpi"], rows[:150])
    new = write_csv(root / "new.csv", ["date", "realgdp", "cpi"], rows)
    bad = write_csv(root / "bad.csv", ["date", "realgdp", "cpi"], rows[:3] + rows[4:40])  # a quarter missing
    small = {"horizon": 4, "context": 16, "forecaster": "nbeats", "hidden_units": 32, "batch_size": 32,
             "learning_rate": 1e-3}
    return Case("series", data, new, bad, "bad.csv, line 5, column 'date'", small, ["--horizon", "4"])


def instructions_case(root: Path, models: dict[str, Path]) -> Case:
    topics = sklearn_datasets.load_wine()  # wine's classes named by its three cultivars' ordinal, as answers
    rows = [{"prompt": f"Which cultivar has alcohol {a:.2f} and hue {h:.2f}?", "completion": f" cultivar {t}"}
            for (a, h), t in zip(topics.data[:, [0, 10]], topics.target, strict=True)]
    rng = np.random.default_rng(0)
    rng.shuffle(rows)
    data = write_jsonl(root / "train.jsonl", rows[:60])
    new = write_jsonl(root / "new.jsonl", rows[60:100])
    bad = write_jsonl(root / "bad.jsonl", [*rows[:2], {"prompt": "Which cultivar?", "completion": ""}])
    tiny = {"model": str(models["causal_lm"]), "batch_size": 8, "learning_rate": 1e-2, "lora_rank": 4}
    return Case("instructions", data, new, bad, "bad.jsonl, line 3, field 'completion'", tiny,
                ["--model", str(models["causal_lm"])])


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


CASES: dict[str, Callable[[Path, dict[str, Path]], Case]] = {
    "text": text_case, "tabular": table_case, "image": image_case, "series": series_case,
    "instructions": instructions_case}


def assert_same_predictions(first, second) -> None:
    if first.texts is not None:  # a language model's completions
        assert first.texts == second.texts
        return
    if first.values is not None:  # a regressor's or forecaster's values
        np.testing.assert_allclose(first.values, second.values, rtol=1e-5, atol=1e-5)
        return
    assert first.labels == second.labels
    np.testing.assert_allclose(first.probabilities, second.probabilities, atol=1e-5)


def test_every_registered_kind_of_data_has_a_case():
    assert set(CASES) == set(TASKS), "a new kind of data brings its case to this test"


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory, tiny_model, tiny_causal_lm) -> Case:
    models = {"encoder": tiny_model, "causal_lm": tiny_causal_lm}
    return CASES[request.param](tmp_path_factory.mktemp(request.param), models)


class KillAt(Callback):
    """Stops training like Ctrl-C at the end of epoch ``epoch``, before that epoch is saved."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, record, is_best: bool) -> None:
        if record.epoch == self.epoch:
            raise KeyboardInterrupt


def fit(case: Case, workspace: Path, epochs: int, **options) -> api.Run:
    return api.fit(case.data, workspace=workspace, epochs=epochs, patience=0, **case.fit, **options)


def test_the_kind_is_told_from_the_data(case):
    assert modality_of(case.data) == case.modality


def test_one_epoch_saved_and_loaded_again_predicts_the_same(case, tmp_path):
    run = fit(case, tmp_path / "ws", epochs=1)
    assert run.task.modality == case.modality and run.task is TASKS[case.modality]
    fresh = run.predict(case.new)
    again = api.load_run(run.id, tmp_path / "ws").predict(case.new)
    assert_same_predictions(fresh, again)
    report = api.evaluate(run.id, case.new, workspace=tmp_path / "ws")
    main = run.recipe.metric  # the metric the run was chosen by: macro-F1, RMSE, MASE
    assert report.n > 0 and np.isfinite(report.metrics[main if main in report.metrics else "accuracy"])
    out = tmp_path / "predicted.csv"
    api.predict_file(run.id, case.new, out, workspace=tmp_path / "ws")
    written = list(csv.DictReader(out.open()))
    if fresh.texts is not None:
        assert [row["completion"] for row in written] == fresh.texts
    elif fresh.values is not None:
        assert [float(row["predicted_value"]) for row in written] == pytest.approx(np.ravel(fresh.values).tolist())
    else:
        assert [row["predicted_label"] for row in written] == fresh.labels


def test_a_killed_fit_resumes_and_ends_as_an_uninterrupted_one(case, tmp_path):
    straight = fit(case, tmp_path / "straight", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        fit(case, tmp_path / "ws", epochs=3, callbacks=[KillAt(2)])
    killed = next(r for r in api.runs(tmp_path / "ws") if r.status == "interrupted")
    resumed = api.resume_fit(killed.id, workspace=tmp_path / "ws")
    assert resumed.metrics["resumed_from_epoch"] == 1 and resumed.metrics["resumes_run"] == killed.id
    assert resumed.metrics["val_loss"] == pytest.approx(straight.metrics["val_loss"], rel=1e-6)
    assert_same_predictions(resumed.predict(case.new), straight.predict(case.new))


def test_bad_input_exits_2_naming_file_row_and_column_and_writes_nothing(case, tmp_path):
    workspace = tmp_path / "ws"
    done = run_tuneloop("fit", str(case.bad), "--workspace", str(workspace), "--epochs", "1", "--quiet", *case.cli)
    assert done.returncode == 2, done.stderr
    assert case.bad_where in done.stderr and "Traceback" not in done.stderr
    assert not workspace.exists()


def test_register_drift_adapt_and_the_gate_run(case, tmp_path):
    workspace = tmp_path / "ws"
    run = fit(case, workspace, epochs=2)
    version = register("m", run.id, workspace=workspace)
    promote(f"m:{version.version}", workspace=workspace)
    report = drift("m", case.new, workspace=workspace)
    assert report.verdict and {e.name for e in report.evidence} >= {"inputs"}
    result = adapt("m", case.new, workspace=workspace, budget="1trials", epochs=1)
    assert result.parent.version == version.version and result.version.version == version.version + 1
    assert result.decision.checks and all(check.summary for check in result.decision.checks), "the gate says why"
    assert result.promoted == result.decision.promote
