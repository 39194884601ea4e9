"""Forecasting: reading and checking series files, forecast windows, the forecasters, and fit, tune, evaluate,
predict and fine-tuning from a base on real series.

Real data: statsmodels' bundled Nile river flow (annual, 1871-1970; Cobb 1978, public domain) and US
macroeconomic series (quarterly, 1959-2009; Federal Reserve Bank of St. Louis, public domain).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import run_tuneloop, write_csv

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.data.series import (
    SeriesExamples,
    Step,
    future_time,
    naive_scale,
    read_series_file,
    seasonal_naive,
    split_origins,
)
from tuneloop.errors import ConfigError, DataError
from tuneloop.models.series_nets import NETWORKS, Forecaster, SeriesNetAdapter, SeriesPreprocessing
from tuneloop.tasks import DataOptions, check_knobs, modality_of, task_class
from tuneloop.training.objective import FORECAST

statsmodels_datasets = pytest.importorskip("statsmodels.datasets")


def monthly(n: int, start_year: int = 2000, day: int = 1) -> list[str]:
    return [f"{start_year + i // 12}-{i % 12 + 1:02d}-{day:02d}" for i in range(n)]


def seasonal_rows(n: int, seed: int = 0) -> list[list]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    values = 100 + 0.5 * t + 10 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 1, n)
    return [[time, round(float(v), 3)] for time, v in zip(monthly(n), values, strict=True)]


@pytest.fixture(scope="module")
def nile(tmp_path_factory) -> Path:
    frame = statsmodels_datasets.nile.load_pandas().data
    path = tmp_path_factory.mktemp("nile") / "nile.csv"
    return write_csv(path, ["year", "volume"], [[int(y), float(v)] for y, v in zip(frame.year, frame.volume,
                                                                                  strict=True)])


@pytest.fixture(scope="module")
def macro(tmp_path_factory) -> Path:
    frame = statsmodels_datasets.macrodata.load_pandas().data
    rows = []
    for year, quarter, gdp, cpi, unemp in zip(frame.year, frame.quarter, frame.realgdp, frame.cpi, frame.unemp,
                                              strict=True):
        date = f"{int(year)}-{3 * int(quarter) - 2:02d}-01"
        rows += [["realgdp", date, gdp], ["cpi", date, cpi], ["unemp", date, unemp]]
    return write_csv(tmp_path_factory.mktemp("macro") / "macro_long.csv", ["series", "date", "value"], rows)


# -- reading --------------------------------------------------------------------------------------------------


def test_wide_file_gives_a_series_per_value_column_and_its_frequency(tmp_path):
    rows = [[t, i, 2 * i] for i, t in enumerate(monthly(30, day=15))]
    file = read_series_file(write_csv(tmp_path / "w.csv", ["date", "sales", "returns"], rows))
    assert list(file.series) == ["sales", "returns"] and file.time_col == "date"
    assert file.step == Step(months=1) and file.step.season == 12
    assert file.series["returns"].values[3] == 6.0 and file.series["sales"].locations[0] == "line 2"


def test_long_file_gives_a_series_per_id(macro):
    file = read_series_file(macro)
    assert file.series_col == "series" and sorted(file.series) == ["cpi", "realgdp", "unemp"]
    assert file.step == Step(months=3) and file.step.season == 4 and len(file.series["cpi"]) == 203


def test_integer_years_and_month_ends(tmp_path, nile):
    assert read_series_file(nile).step == Step(seconds=1.0, integer=True)
    ends = ["2021-01-31", "2021-02-28", "2021-03-31", "2021-04-30"]
    file = read_series_file(write_csv(tmp_path / "e.csv", ["month", "v"], [[t, 1] for t in ends]))
    assert file.step == Step(months=1)
    assert future_time(file.series["v"].times, file.step, 4) == "2021-05-31"
    assert future_time(file.series["v"].times, file.step, 5) == "2021-06-30"


@pytest.mark.parametrize(("times", "step", "ahead"), [
    (["2020-01-01", "2020-04-01"], Step(months=3), ["2020-07-01", "2020-10-01"]),
    (["2020-01-30", "2020-02-29"], Step(months=1), ["2020-03-30", "2020-04-30"]),
    ([1999, 2000], Step(seconds=1.0, integer=True), [2001, 2002]),
    (["2024-02-28", "2024-02-29"], Step(seconds=86400.0), ["2024-03-01", "2024-03-02"]),
    (["2024-01-01T22:00:00", "2024-01-01T23:00:00"], Step(seconds=3600.0), ["2024-01-02T00:00:00",
                                                                           "2024-01-02T01:00:00"]),
])
def test_future_times_step_on_from_the_last(times, step, ahead):
    assert [future_time(times, step, len(times) + i) for i in range(2)] == ahead


@pytest.mark.parametrize(("rows", "where", "words"), [
    ([["2020-01-01", 1], ["2020-02-01", 2], ["2020-04-01", 3], ["2020-05-01", 4]], "line 4, column 'date'",
     "1 point is missing"),
    ([["2020-01-01", 1], ["2020-02-01", 2], ["2020-02-01", 3]], "line 4, column 'date'", "repeats"),
    ([["2020-01-01", 1], ["2020-03-01", 2], ["2020-02-01", 3], ["2020-04-01", 3]], "line 4, column 'date'",
     "sort the rows by time"),
    ([["2020-01-01", 1], ["2020-02-01", ""], ["2020-03-01", 3]], "line 3, column 'value'", "missing"),
    ([["2020-01-01", 1], ["2020-02-01", "n/a"], ["2020-03-01", 3]], "line 3, column 'value'", "expected a number"),
    ([["2020-01-01", 1], ["someday", 2]], "line 3, column 'date'", "expected a date"),
])
def test_bad_series_name_the_file_line_and_column(tmp_path, rows, where, words):
    path = write_csv(tmp_path / "bad.csv", ["date", "value"], rows)
    with pytest.raises(DataError) as error:
        read_series_file(path)
    assert f"bad.csv, {where}" in str(error.value) and words in str(error.value)


def test_a_file_without_a_time_column_is_refused_with_its_columns(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "b"], [[1, 2], [3, 4]])
    with pytest.raises(DataError, match="no time column found.*--time-col.*a, b"):
        read_series_file(path)


def test_series_are_told_from_tables_and_texts(tmp_path, nile, macro):
    assert modality_of(nile) == "series" and modality_of(macro) == "series"
    table = write_csv(tmp_path / "t.csv", ["x", "colour", "y"], [[1, "red", 2.0], [2, "blue", 3.5]] * 5)
    assert modality_of(table) == "tabular"
    texts = write_csv(tmp_path / "texts.csv", ["date", "text", "label"],
                      [["2020-01-01", "a long enough sentence of words", "pos"]] * 4)
    assert modality_of(texts) == "text"


# -- windows, the naive forecast and the metrics ------------------------------------------------------------------


def test_validation_windows_forecast_the_last_stretch_and_training_windows_end_before_it(tmp_path):
    file = read_series_file(write_csv(tmp_path / "s.csv", ["date", "v"], seasonal_rows(60)))
    train, val = split_origins(file, horizon=6, val_fraction=0.2, first=2)
    held = 12  # a fifth of 60 points
    assert val["v"] == list(range(60 - held, 60 - 6 + 1))
    assert max(train["v"]) + 6 <= 60 - held and min(train["v"]) == 2


def test_contexts_repeat_the_first_point_before_the_start(tmp_path):
    file = read_series_file(write_csv(tmp_path / "s.csv", ["date", "v"], [[t, i] for i, t in enumerate(monthly(8))]))
    windows = file.windows({"v": [2, 8]}, horizon=2, labelled=False)
    np.testing.assert_array_equal(windows.contexts(4), [[0, 0, 0, 1], [4, 5, 6, 7]])
    assert windows.future_times()[1] == ["2000-09-01", "2000-10-01"]


def test_seasonal_naive_repeats_the_last_season_and_scores_mase_one_on_a_repeating_series():
    contexts = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(seasonal_naive(contexts, 5, 3), [[4, 5, 6, 4, 5]])
    np.testing.assert_array_equal(seasonal_naive(contexts, 2, 1), [[6, 6]])
    assert naive_scale(np.array([1.0, 3.0, 1.0, 3.0]), 1) == 2.0
    assert naive_scale(np.array([5.0, 5.0, 5.0]), 1) == 5.0  # constant: its level


def test_forecast_objective_scores_mase_smape_and_r2_against_the_context_mean():
    horizon = 2
    standardized = np.array([[1.0, -1.0], [0.5, 0.5]])
    mean, spread, scale = np.array([[10.0], [20.0]]), np.array([[2.0], [4.0]]), np.array([[1.0], [2.0]])
    labels = np.concatenate([standardized, mean, spread, scale], axis=1)
    loss, perfect = FORECAST.score(standardized, labels)
    assert loss == 0 and perfect["mase"] == 0 and perfect["r2"] == 1.0 and perfect["smape"] == 0
    _, at_mean = FORECAST.score(np.zeros((2, horizon)), labels)
    assert at_mean["r2"] == pytest.approx(0.0)
    # errors in units: window 1 |2|,|2| over scale 1; window 2 |2|,|2| over scale 2
    assert at_mean["mase"] == pytest.approx((2 + 2 + 1 + 1) / 4) and at_mean["mae"] == pytest.approx(2.0)


# -- the forecasters ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_each_forecaster_forecasts_the_horizon_and_saves_and_loads_the_same(kind, tmp_path):
    torch.manual_seed(0)
    model = Forecaster(kind, context=24, horizon=6, hidden_units=32, hidden_layers=2, dropout=0.1).eval()
    contexts = torch.randn(5, 24)
    out = model(contexts)
    assert out.shape == (5, 6) and model.embed(contexts).shape[0] == 5
    preprocessing = SeriesPreprocessing("date", None, ("v",), Step(months=1), 12, 6, 24)
    SeriesNetAdapter().save(model, preprocessing, str(tmp_path))
    loaded, read_back = SeriesNetAdapter().load(str(tmp_path))
    assert read_back == preprocessing
    torch.testing.assert_close(loaded(contexts), out)


def test_knobs_of_other_kinds_are_refused_and_series_knobs_elsewhere_too():
    with pytest.raises(ConfigError, match="'lora_rank' parameter does not apply to series"):
        check_knobs(task_class("series"), Recipe(lora_rank=8))
    with pytest.raises(ConfigError, match="'context' parameter does not apply to tabular.*applies to series"):
        check_knobs(task_class("tabular"), Recipe(context=24))


# -- the loop on real series --------------------------------------------------------------------------------------


def test_fit_evaluate_and_predict_the_nile(nile, tmp_path):
    run = api.fit(nile, workspace=tmp_path / "ws", horizon=5, epochs=30, forecaster="nbeats", hidden_units=32)
    assert run.metrics["seasonal_naive_mase"] > 0 and np.isfinite(run.metrics["val_mase"])
    assert run.recipe.metric == "mase" and run.recipe.context == 20  # four horizons by default
    report = api.evaluate(run.id, nile, workspace=tmp_path / "ws")
    assert {"mase", "smape", "mae", "rmse", "seasonal_naive_mase"} <= set(report.metrics)
    out = tmp_path / "forecast.csv"
    predictions = api.predict_file(run.id, nile, out, workspace=tmp_path / "ws")
    rows = list(csv.DictReader(out.open()))
    assert [row["year"] for row in rows] == ["1971", "1972", "1973", "1974", "1975"]
    assert [float(row["predicted_value"]) for row in rows] == pytest.approx(predictions.values[0].tolist())


def test_the_cli_fits_and_predicts_a_series(nile, tmp_path):
    workspace = str(tmp_path / "ws")
    done = run_tuneloop("fit", str(nile), "--horizon", "4", "--epochs", "5", "--forecaster", "dlinear",
                        "--workspace", workspace, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "MASE" in done.stdout and "seasonal naive: MASE" in done.stdout
    done = run_tuneloop("predict", "latest", str(nile), "-o", str(tmp_path / "f.csv"), "--workspace", workspace)
    assert done.returncode == 0 and "4 forecast points for each of 1 series" in done.stdout


def test_guided_tune_moves_the_forecaster_knobs(macro, tmp_path):
    result = api.tune(macro, workspace=tmp_path / "ws", budget="4trials", horizon=4, seed_check=False,
                      refit=False)
    reasons = [trial.reason for trial in result.trials]
    assert "linear forecaster (DLinear)" in reasons[0]
    assert any(knob in reason for reason in reasons[1:] for knob in ("context", "forecaster", "weight_decay",
                                                                   "augment", "epochs", "learning_rate"))
    assert result.best_run is not None and result.best_run.recipe.metric == "mase"
    from tuneloop.report.html import write_report

    page = write_report(tmp_path / "ws", result.study_id, tmp_path / "report.html").read_text()
    assert "history, forecasts and truth" in page and "seasonal-naive forecast: MASE" in page


def test_lr_find_on_a_series(nile):
    finding = api.lr_find(nile, horizon=5)
    assert len(finding.losses) == len(finding.learning_rates) > 10 and np.isfinite(finding.losses[0])
    assert 0 < finding.suggestion < 1


def test_a_base_trained_on_many_series_fine_tunes_on_another(macro, tmp_path, nile):
    base = api.fit(macro, workspace=tmp_path / "ws", horizon=4, epochs=5, forecaster="dlinear")
    target = write_csv(tmp_path / "target.csv", ["date", "v"], [[t, v] for t, v in seasonal_rows(40)])
    tuned = api.fit(target, workspace=tmp_path / "ws", model=str(base.path), epochs=3)
    assert tuned.recipe.context == base.recipe.context or tuned.metrics["val_mase"] > 0
    with pytest.raises(ConfigError, match="forecasts 4 points ahead; --horizon 6 differs"):
        api.fit(target, workspace=tmp_path / "ws", model=str(base.path), horizon=6, epochs=1)


def test_cross_validation_folds_are_blocks_in_time_with_overlapping_forecasts_purged(tmp_path):
    from tuneloop.pipeline import load_task

    task = load_task(write_csv(tmp_path / "s.csv", ["date", "v"], seasonal_rows(80)), None,
                     DataOptions(task="series", horizon=4), model=None)
    origins = np.asarray(task.pool().origins)
    splits = task.folds(5, seed=0)
    assert len(splits) == 5
    assert sorted(np.concatenate([val for _, val in splits]).tolist()) == list(range(len(origins)))
    for train, val in splits:
        block = origins[val]
        within = np.flatnonzero((origins >= block.min()) & (origins <= block.max()))
        assert sorted(within.tolist()) == sorted(val.tolist())  # every window from its first to its last: a block
        assert not np.any((origins[train] + 4 > block.min()) & (origins[train] < block.max() + 4))


def test_windows_in_memory_save_and_load(tmp_path):
    file = read_series_file(write_csv(tmp_path / "s.csv", ["date", "v"], seasonal_rows(30)))
    windows = file.windows({"v": [5, 9, 30]}, horizon=3, labelled=False)
    windows.save(tmp_path, "kept")
    from tuneloop.data import load_examples

    again = load_examples(tmp_path, "kept")
    assert isinstance(again, SeriesExamples) and again.fingerprint() == windows.fingerprint()
    np.testing.assert_array_equal(again.contexts(7), windows.contexts(7))


def test_series_options_are_stored_with_the_run(nile, tmp_path):
    run = api.fit(nile, workspace=tmp_path / "ws", horizon=5, epochs=2, time_col="year")
    from tuneloop.store.workspace import Workspace

    with Workspace.open(tmp_path / "ws") as store:
        stored = store.resolve(run.id).data_options
    assert DataOptions.from_dict(stored).horizon == 5 and DataOptions.from_dict(stored).time_col == "year"
