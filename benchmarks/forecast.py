"""Univariate forecasts of small real series: seasonal naive, statsmodels ETS chosen by AICc, NeuralForecast NHITS and
tuneloop's guided ``tune`` (``tuneloop_forecast``), side by side in one run.

Series (``SERIES``: points, frequency, season length m, horizon H, licence), read offline from statsmodels.datasets
and vega_datasets' local copies, regular and without gaps. The test set is the last H points, never shuffled:
nile (annual Nile flow 1871-1970: 100, yearly, m 1, H 10), sunspots (1700-2008: 309, yearly, 1, 10), realgdp (US
real GDP 1959Q1-2009Q3: 203, quarterly, 4, 8), co2 (Mauna Loa, weekly 1958-2001 interpolated over its 59 missing
weeks and averaged to months, the partial first month left out: 525, monthly, 12, 12), elnino (Nino 1+2 sea surface
temperature 1950-2010, melted from a year x month table: 732, monthly, 12, 12), all public domain, from
statsmodels; employment (US nonfarm, seasonally adjusted, 2006-2015: 120, monthly, 12, 12; BLS, public domain) and
seattle_temp (Seattle daily maximum temperature 2012-2015 averaged over whole Sunday-ending weeks: 208, weekly, 52,
13; NOAA, public domain), from vega_datasets; ibm (monthly price 2000-01..2010-03: 123, monthly, 12, 12; vega_datasets
stocks: the package is MIT-licensed, the data's origin and licence are not stated).

Metrics, computed here: MASE (mean absolute error over the history's mean absolute seasonal difference
|y_t - y_{t-m}|, with m 1 where the history is shorter than 2m or that scale is 0), sMAPE (200 mean |f - y| /
(|f| + |y|), 0/0 counted as 0), MAE and RMSE. Each method is timed from the history to its H forecasts:

1. ``seasonal_naive``: the last season repeated (the last value for m 1).
2. ``ets``: statsmodels ``ETSModel`` with additive errors; trend none, additive or additive damped; season none or
   additive (only where m > 1 and the history holds 2 full seasons); the lowest AICc kept, as AutoETS chooses.
   statsforecast 2.1.1's AutoETS is not used: statsforecast (and its dependency fugue) require pandas<3, and
   installing it would replace pandas 3.1.1 with 2.3.3.
3. ``nhits``: NeuralForecast 3.3.0 NHITS (``pip install neuralforecast==3.3.0``, which adds packages and changes
   none installed), its defaults but for the required input size (2H, as in the library's examples), robust
   scaling (the default, none, leaves a series of level 1e4 unscaled for the 1e-3 learning rate), the seed, and a
   wall-time cap: its default 1,000 steps, cut by Lightning's ``max_time`` at ``--budget-s``, tuneloop's budget
   (the steps run are printed; on 2 cores a step of 1,024 windows takes about 1 s, so 60 s runs about 50). Its
   import is outside the clock. Darts 0.48.1 is not used: its dependency holidays requires python-dateutil<3 and
   would replace python-dateutil 4.0.0 with 2.9.0.post0.
4. ``tuneloop``: ``tuneloop.tune`` of the history (guided, its defaults, the horizon and season given) with a wall-time
   budget of ``--budget-s`` that counts reading the data, the range test and the final fit, and the seed; the final
   model forecasts the H points after the history.

Printed: a line per run; per series each method's MASE, sMAPE and seconds (means over seeds for nhits and tuneloop);
per method the mean MASE and the mean rank of its MASE among the methods of each series.

Reproduce (from the repository root, CPU; about 27 minutes with the default seeds and budget, nearly all NHITS):

    make peers   # neuralforecast 3.3.0 and vega_datasets 0.9.0
    .venv/bin/python benchmarks/forecast.py --json benchmarks/results/forecast.json
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import os
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from peers import cpu_flags, cpu_model, native_bf16

from tuneloop.store.atomic import write_text_atomic

METHODS = ("seasonal_naive", "ets", "nhits", "tuneloop")
SEEDED = ("nhits", "tuneloop")
NOTES: dict[str, str] = {}  # what a method chose in its last forecast, printed with the run


def load(name: str) -> pd.DataFrame:
    """Series ``name`` as columns time and value, from the copies installed with statsmodels and vega_datasets
    (``vega_datasets.local_data``: its ``data`` would download)."""
    import statsmodels.api as sm
    from vega_datasets import local_data

    if name in ("nile", "sunspots", "realgdp", "co2", "elnino"):
        data = getattr(sm.datasets, "macrodata" if name == "realgdp" else name).load_pandas().data
    if name in ("nile", "sunspots"):
        year, value = ("year", "volume") if name == "nile" else ("YEAR", "SUNACTIVITY")
        time, value = pd.to_datetime(data[year].astype(int).astype(str) + "-01-01"), data[value]
    elif name == "realgdp":
        quarters = pd.PeriodIndex.from_fields(year=data["year"].astype(int), quarter=data["quarter"].astype(int),
                                              freq="Q")
        time, value = quarters.to_timestamp(), data["realgdp"]
    elif name == "co2":
        monthly = data["co2"].interpolate().resample("MS").mean().iloc[1:]  # March 1958 has a single week
        time, value = monthly.index, monthly
    elif name == "elnino":
        value = data.drop(columns="YEAR").to_numpy().ravel()  # a row per year, a column per month, in order
        time = pd.date_range(f"{int(data['YEAR'].iloc[0])}-01-01", periods=len(value), freq="MS")
    elif name == "employment":
        data = local_data.us_employment()
        time, value = data["month"], data["nonfarm"]
    elif name == "seattle_temp":
        days = local_data.seattle_weather().set_index("date")["temp_max"]
        weeks = days.resample("W-SUN").agg(["mean", "count"])
        weeks = weeks[weeks["count"] == 7]  # whole weeks only: the first and the last are partial
        time, value = weeks.index, weeks["mean"]
    else:
        data = local_data.stocks()
        data = data[data["symbol"] == name.upper()]
        time, value = data["date"], data["price"]
    frame = pd.DataFrame({"time": pd.to_datetime(np.asarray(time)), "value": np.asarray(value, dtype=float)})
    return frame.sort_values("time").reset_index(drop=True)


@dataclass
class Series:
    name: str
    freq: str  # pandas alias of its regular frequency
    m: int  # season length
    H: int  # horizon: the test set is the last H points
    licence: str

    @functools.cached_property
    def frame(self) -> pd.DataFrame:
        """Columns ``time`` and ``value``, sorted, one row per period with no gap."""
        frame = load(self.name)
        expected = pd.date_range(frame["time"].iloc[0], periods=len(frame), freq=self.freq)
        if not (frame["time"].to_numpy() == expected.to_numpy()).all() or frame["value"].isna().any():
            raise ValueError(f"Series {self.name!r} is not regular at frequency {self.freq} without gaps.")
        return frame


SERIES: dict[str, Series] = {s.name: s for s in (
    Series("nile", "YS", 1, 10, "public domain (statsmodels.datasets.nile)"),
    Series("sunspots", "YS", 1, 10, "public domain (statsmodels.datasets.sunspots, NOAA NGDC)"),
    Series("realgdp", "QS", 4, 8, "public domain (statsmodels.datasets.macrodata, FRED)"),
    Series("co2", "MS", 12, 12, "public domain (statsmodels.datasets.co2, Scripps / CDIAC)"),
    Series("elnino", "MS", 12, 12, "public domain (statsmodels.datasets.elnino, NOAA ERSST.V3B)"),
    Series("employment", "MS", 12, 12, "public domain (vega_datasets us-employment, US BLS)"),
    Series("seattle_temp", "W-SUN", 52, 13, "public domain (vega_datasets seattle-weather, NOAA)"),
    Series("ibm", "MS", 12, 12, "vega_datasets stocks: package MIT, data origin and licence not stated"),
)}


def write_series_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """The series as a ``time,value`` CSV, times as ISO dates."""
    out = pd.DataFrame({"time": frame["time"].dt.strftime("%Y-%m-%d"), "value": frame["value"]})
    write_text_atomic(path, out.to_csv(index=False))


def split_last(frame: pd.DataFrame, H: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, the last H points): the test set, in time order."""
    return frame.iloc[:-H].reset_index(drop=True), frame.iloc[-H:].reset_index(drop=True)


def mase(forecast: np.ndarray, actual: np.ndarray, history: np.ndarray, m: int) -> float:
    scale = 0.0
    if len(history) >= 2 * m:
        scale = float(np.mean(np.abs(history[m:] - history[:-m])))
    if scale == 0.0 and len(history) >= 2:
        scale = float(np.mean(np.abs(np.diff(history))))
    return float(np.mean(np.abs(forecast - actual)) / scale) if scale > 0 else float("nan")


def smape(forecast: np.ndarray, actual: np.ndarray) -> float:
    denominator = np.abs(forecast) + np.abs(actual)
    ratio = np.divide(np.abs(forecast - actual), denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(200 * np.mean(ratio))


def metrics(forecast: np.ndarray, actual: np.ndarray, history: np.ndarray, m: int) -> dict[str, float]:
    error = forecast - actual
    return {"mase": mase(forecast, actual, history, m), "smape": smape(forecast, actual),
            "mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error**2)))}


def seasonal_naive(history: np.ndarray, H: int, m: int) -> np.ndarray:
    if m > 1 and len(history) >= m:
        return np.resize(history[-m:], H)  # the last season, repeated
    return np.full(H, history[-1], dtype=float)


def ets_aicc(history: np.ndarray, H: int, m: int) -> np.ndarray:
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    seasons = [None, "add"] if m > 1 and len(history) >= 2 * m else [None]
    best, chosen = None, ""
    for trend, damped in ((None, False), ("add", False), ("add", True)):
        for season in seasons:
            model = ETSModel(history, error="add", trend=trend, damped_trend=damped, seasonal=season,
                             seasonal_periods=m if season else None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = model.fit(disp=False)
            if np.isfinite(fit.aicc) and (best is None or fit.aicc < best.aicc):
                best, chosen = fit, f"ETS(A,{'Ad' if damped else 'A' if trend else 'N'},{'A' if season else 'N'})"
    NOTES["ets"] = f"{chosen}, AICc {best.aicc:.1f}"
    return np.asarray(best.forecast(H), dtype=float)


def nhits(history: np.ndarray, H: int, m: int, *, seed: int = 0, budget_s: float = 60.0) -> np.ndarray:
    from neuralforecast import NeuralForecast
    from neuralforecast.models import NHITS

    model = NHITS(h=H, input_size=min(2 * H, len(history) - H), scaler_type="robust", random_seed=seed,
                  max_time=datetime.timedelta(seconds=budget_s), accelerator="cpu", logger=False,
                  enable_progress_bar=False, enable_model_summary=False)
    frame = pd.DataFrame({"unique_id": "series", "ds": np.arange(len(history)), "y": history})
    forecaster = NeuralForecast(models=[model], freq=1)
    forecaster.fit(frame)
    predicted = forecaster.predict()["NHITS"].to_numpy(dtype=float)
    fitted = forecaster.models[0]
    NOTES["nhits"] = f"{len(fitted.train_trajectories)} of {fitted.trainer_kwargs['max_steps']} steps"
    return predicted


def tuneloop_forecast(history: pd.DataFrame, H: int, m: int, budget_s: float, seed: int) -> np.ndarray:
    """tuneloop's forecast of the H points after ``history`` (columns time, value) in ``budget_s`` seconds: a
    guided ``tune`` with its defaults (the budget counts reading the data and the range test), then the
    final model's forecast from the end of the history."""
    import tempfile

    import tuneloop

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "history.csv"
        write_series_csv(history, path)
        result = tuneloop.tune(path, task="series", horizon=H, season=m, budget=f"{int(budget_s)}s",
                               workspace=Path(folder) / "ws", recipe=tuneloop.Recipe(seed=seed))
        return np.asarray(result.best_run.predict(path).values[0], dtype=np.float64)


def quiet_neuralforecast() -> None:
    """Imported before the clock; Lightning's start-up lines silenced."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import neuralforecast.models  # noqa: F401

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"pytorch_lightning\.")  # its own deprecation notices, once per fit


PEERS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {"seasonal_naive": seasonal_naive, "ets": ets_aicc}


def run_method(method: str, series: Series, history: pd.DataFrame, seed: int, budget_s: float) -> np.ndarray:
    values, H, m = history["value"].to_numpy(dtype=float), series.H, series.m
    if method == "tuneloop":
        return tuneloop_forecast(history.copy(), H, m, budget_s, seed)
    return nhits(values, H, m, seed=seed, budget_s=budget_s) if method == "nhits" else PEERS[method](values, H, m)


def comma_list(allowed: tuple[str, ...], option: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names or any(name not in allowed for name in names):
            raise argparse.ArgumentTypeError(f"The '{option}' option takes a comma-separated subset of "
                                             f"{', '.join(allowed)}. Got {text!r} instead.")
        return names

    return parse


def seed_list(text: str) -> list[int]:
    seeds = [int(part) for part in text.split(",") if part.strip().isdigit()]
    if not seeds or len(seeds) != len([part for part in text.split(",") if part.strip()]):
        raise argparse.ArgumentTypeError(f"The '--seeds' option takes comma-separated seeds >= 0, like 0,1,2. "
                                         f"Got {text!r} instead.")
    return seeds


def versions() -> dict[str, str]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {package: version(package) for package in ("statsmodels", "neuralforecast", "pytorch-lightning", "torch",
                                                      "numpy", "pandas", "vega-datasets", "statsforecast", "darts")}


def summarize(runs: list[dict[str, Any]], names: list[str], methods: list[str]) -> dict[str, Any]:
    """Per series and method the means over seeds; per method the mean MASE and the mean rank of its MASE."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        table[name] = {}
        for method in methods:
            done = [r for r in runs if (r["series"], r["method"]) == (name, method) and "mase" in r]
            if done:
                table[name][method] = {k: float(np.mean([r[k] for r in done])) for k in ("mase", "smape", "seconds")}
    ranks: dict[str, list[float]] = {method: [] for method in methods}
    for row in table.values():
        scored = [method for method in methods if method in row and np.isfinite(row[method]["mase"])]
        ordered = pd.Series({method: row[method]["mase"] for method in scored}).rank(method="average")
        for method in scored:
            ranks[method].append(float(ordered[method]))
    overall = {method: {"series": len(ranks[method]),
                        "mase_mean": float(np.mean([table[n][method]["mase"] for n in names if method in table[n]]))
                        if ranks[method] else None,
                        "rank_mean": float(np.mean(ranks[method])) if ranks[method] else None} for method in methods}
    return {"per_series": table, "per_method": overall}


def print_summary(summary: dict[str, Any], methods: list[str], not_connected: set[str]) -> None:
    print("\n| series | " + " | ".join(f"{m} MASE | sMAPE | s" for m in methods) + " |")
    print("|---|" + "---:|---:|---:|" * len(methods))
    for name, row in summary["per_series"].items():
        cells = [f"{row[m]['mase']:.3f} | {row[m]['smape']:.2f} | {row[m]['seconds']:.1f}" if m in row
                 else ("not connected" if m in not_connected else "failed") + " | | " for m in methods]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n| method | series | mean MASE | mean rank |")
    print("|---|---:|---:|---:|")
    for method, row in summary["per_method"].items():
        missing = "not connected" if method in not_connected else "failed"
        print(f"| {method} | {row['series']} | " + (f"{row['mase_mean']:.3f} | {row['rank_mean']:.2f} |"
                                                    if row["mase_mean"] is not None else f"{missing} | |"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=comma_list(tuple(SERIES), "--series"), default=list(SERIES),
                        help=f"comma-separated: {','.join(SERIES)}")
    parser.add_argument("--methods", type=comma_list(METHODS, "--methods"), default=list(METHODS),
                        help=f"comma-separated: {','.join(METHODS)}")
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="seeds of nhits and tuneloop (0,1,2)")
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="wall seconds for tuneloop per series and seed, and NHITS's training time cap")
    parser.add_argument("--json", type=Path, help="also write every number here (atomically)")
    args = parser.parse_args()
    if args.budget_s <= 0:
        parser.error(f"The '--budget-s' option must be > 0. Got {args.budget_s} instead.")

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    cpu = {"model": cpu_model(), "cpus": os.cpu_count(), "flags": flags, "native_bf16": native_bf16()}
    print(f"CPU: {cpu['model'] or 'unknown'}, {cpu['cpus']} cores, flags {', '.join(flags) or 'none of avx2/avx512'}, "
          f"avx512_bf16 {'present' if 'avx512_bf16' in flags else 'absent'}; "
          + ", ".join(f"{k} {v}" for k, v in versions().items()), flush=True)
    record: dict[str, Any] = {"cpu": cpu, "versions": versions(),
                              "settings": vars(args) | {"json": str(args.json) if args.json else None},
                              "series": {}, "runs": []}

    def save() -> None:
        if args.json:
            write_text_atomic(args.json, json.dumps(record, indent=2, default=str))

    if "nhits" in args.methods:
        quiet_neuralforecast()
    not_connected: set[str] = set()
    for name in args.series:
        series = SERIES[name]
        history, test = split_last(series.frame, series.H)
        record["series"][name] = {"points": len(series.frame), "freq": series.freq, "m": series.m, "H": series.H,
                                  "first": str(series.frame["time"].iloc[0].date()),
                                  "last": str(series.frame["time"].iloc[-1].date()), "licence": series.licence}
        print(f"\n{name}: {len(series.frame)} points, {series.freq}, m {series.m}, H {series.H}; {series.licence}",
              flush=True)
        for method in args.methods:
            for seed in args.seeds if method in SEEDED else [None]:
                if method in not_connected:
                    break
                run: dict[str, Any] = {"series": name, "method": method, "seed": seed}
                NOTES.pop(method, None)
                started = time.perf_counter()
                try:
                    forecast = np.asarray(run_method(method, series, history, seed or 0, args.budget_s), dtype=float)
                    run["seconds"] = time.perf_counter() - started
                    if forecast.shape != (series.H,) or not np.isfinite(forecast).all():
                        raise ValueError(f"{method} returned {forecast.shape} values, {series.H} finite expected")
                    run |= metrics(forecast, test["value"].to_numpy(dtype=float), history["value"].to_numpy(),
                                   series.m)
                    run |= {"forecast": forecast.tolist(), "note": NOTES.get(method, "")}
                    print(f"  {name} {method}{'' if seed is None else f' seed {seed}'}: MASE {run['mase']:.3f}, "
                          f"sMAPE {run['smape']:.2f}, MAE {run['mae']:.4g}, RMSE {run['rmse']:.4g}, "
                          f"{run['seconds']:.1f}s" + (f"; {run['note']}" if run["note"] else ""), flush=True)
                except NotImplementedError as error:
                    not_connected.add(method)
                    print(f"  {name} {method}: not connected ({error})", flush=True)
                    break
                except Exception as error:  # one failing method must not end the benchmark
                    run |= {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
                    print(f"  {name} {method}: FAILED {run['error']}", flush=True)
                record["runs"].append(run)
                save()

    summary = summarize(record["runs"], args.series, args.methods)
    record |= {"summary": summary, "not_connected": sorted(not_connected)}
    print_summary(summary, args.methods, not_connected)
    save()


if __name__ == "__main__":
    main()
