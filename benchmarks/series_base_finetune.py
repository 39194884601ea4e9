"""A forecaster trained on many series, then fine-tuned on a short one, against training the short one alone.

Data: statsmodels' US macroeconomic series (quarterly, 1959Q1-2009Q3, 203 points each; Federal Reserve Bank of
St. Louis and BLS, public domain). Each of them in turn is the target, cut to its last ``--points`` points; the
base trains on the full history of the others (long format, one id per series), up to the target's first kept
point, so the base has seen nothing the target will be scored on. The test set is the target's last ``--horizon``
points, never shuffled; every method forecasts them from the points before.

Per target and seed, each method as ``tuneloop fit`` runs it with its defaults (a DLinear forecaster, its context
four horizons, 100 epochs stopped by validation on the last fifth):

1. ``seasonal_naive``: the last season repeated (m 4);
2. ``alone``: a forecaster trained on the short target alone;
3. ``base``: the base's forecast, unchanged;
4. ``fine-tuned``: the base fine-tuned on the short target (``--model`` the base's folder).

Printed: MASE per target and method (means over seeds), the mean over targets, and the paired difference of
fine-tuned against alone with a 95% t-interval over targets. MASE's scale is the mean absolute seasonal difference
of the points before the test set.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/series_base_finetune.py \
        --json benchmarks/results/series_base_finetune.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from peers import cpu_flags, cpu_model, native_bf16

import tuneloop
from tuneloop.store.atomic import write_text_atomic

SEASON = 4
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201}
METHODS = ("seasonal_naive", "alone", "base", "fine-tuned")


def macro_series() -> tuple[list[str], dict[str, np.ndarray]]:
    from statsmodels.datasets import macrodata

    frame = macrodata.load_pandas().data
    dates = [f"{int(y)}-{3 * int(q) - 2:02d}-01" for y, q in zip(frame.year, frame.quarter, strict=True)]
    names = ["realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "tbilrate", "unemp", "pop",
             "infl", "realint"]
    return dates, {name: frame[name].to_numpy(dtype=np.float64) for name in names}


def write_long(path: Path, dates: list[str], series: dict[str, np.ndarray], end: int) -> None:
    lines = ["series,date,value"] + [f"{name},{dates[i]},{float(values[i])!r}" for name, values in series.items()
                                     for i in range(end)]
    path.write_text("\n".join(lines) + "\n")


def write_one(path: Path, dates: list[str], values: np.ndarray, start: int, end: int) -> None:
    path.write_text("date,value\n" + "".join(f"{dates[i]},{float(values[i])!r}\n" for i in range(start, end)))


def mase(forecast: np.ndarray, truth: np.ndarray, history: np.ndarray) -> float:
    lag = SEASON if len(history) >= 2 * SEASON else 1
    scale = float(np.mean(np.abs(history[lag:] - history[:-lag])))
    return float(np.mean(np.abs(forecast - truth)) / (scale if scale > 0 else 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=40, help="points of the target kept, test included")
    parser.add_argument("--horizon", type=int, default=4)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--targets", help="comma-separated series to hold out in turn [all twelve]")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    flags = sorted(flag for flag in cpu_flags() if flag.startswith("avx"))
    print(f"CPU: {cpu_model()}, flags {', '.join(flags)}, native bf16 {native_bf16()}")
    dates, series = macro_series()
    targets = args.targets.split(",") if args.targets else list(series)
    n = len(dates)
    start = n - args.points
    runs = []
    for target in targets:
        values = series[target]
        others = {name: v for name, v in series.items() if name != target}
        history, truth = values[start:n - args.horizon], values[n - args.horizon:]
        naive = np.resize(history[-SEASON:], args.horizon)
        for seed in seeds:
            with tempfile.TemporaryDirectory() as folder:
                root = Path(folder)
                write_long(root / "base.csv", dates, others, start)
                write_one(root / "target.csv", dates, values, start, n - args.horizon)
                scores = {"seasonal_naive": mase(naive, truth, history)}
                began = time.perf_counter()
                base = tuneloop.fit(root / "base.csv", workspace=root / "ws", horizon=args.horizon, seed=seed)
                base_seconds = time.perf_counter() - began
                scores["base"] = mase(base.predict(root / "target.csv").values[0], truth, history)
                began = time.perf_counter()
                alone = tuneloop.fit(root / "target.csv", workspace=root / "ws", horizon=args.horizon, seed=seed)
                alone_seconds = time.perf_counter() - began
                scores["alone"] = mase(alone.predict(root / "target.csv").values[0], truth, history)
                began = time.perf_counter()
                tuned = tuneloop.fit(root / "target.csv", workspace=root / "ws", model=str(base.path), seed=seed)
                tuned_seconds = time.perf_counter() - began
                scores["fine-tuned"] = mase(tuned.predict(root / "target.csv").values[0], truth, history)
            runs.append({"target": target, "seed": seed, **scores, "base_seconds": base_seconds,
                         "alone_seconds": alone_seconds, "fine_tuned_seconds": tuned_seconds})
            print(f"{target} seed {seed}: " + ", ".join(f"{m} {scores[m]:.3f}" for m in METHODS), flush=True)
    per_target = {t: {m: statistics.mean(r[m] for r in runs if r["target"] == t) for m in METHODS} for t in targets}
    print("\n| target | " + " | ".join(METHODS) + " |\n|---|" + "---:|" * len(METHODS))
    for target, means in per_target.items():
        print(f"| {target} | " + " | ".join(f"{means[m]:.3f}" for m in METHODS) + " |")
    overall = {m: statistics.mean(means[m] for means in per_target.values()) for m in METHODS}
    print("| mean | " + " | ".join(f"{overall[m]:.3f}" for m in METHODS) + " |")
    diffs = [means["fine-tuned"] - means["alone"] for means in per_target.values()]
    half = T_975.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / len(diffs) ** 0.5
    wins = sum(d < 0 for d in diffs)
    print(f"\nfine-tuned - alone, MASE over {len(diffs)} targets: {statistics.mean(diffs):+.3f} +- {half:.3f} "
          f"(95% t-interval); fine-tuned lower on {wins} of {len(diffs)}")
    if args.json:
        result = {"cpu": {"model": cpu_model(), "flags": flags, "native_bf16": native_bf16()},
                  "settings": {"points": args.points, "horizon": args.horizon, "seeds": seeds},
                  "runs": runs, "per_target": per_target, "mean": overall,
                  "fine_tuned_minus_alone": {"mean": statistics.mean(diffs), "half_width": half, "wins": wins,
                                             "targets": len(diffs)}}
        write_text_atomic(args.json, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
