"""Tables: ``tuneloop tune`` (an MLP, guided) against scikit-learn's HistGradientBoosting, side by side.

HistGradientBoosting with its defaults is what most users try first on a table. Datasets, scikit-learn's bundled
tables (BSD licence; from the UCI repository, diabetes from Efron et al., 2004):

- ``wine``: 178 wines, 13 measurements, 3 cultivars;
- ``breast_cancer``: 569 tumours, 30 measurements, benign or malignant;
- ``digits``: 1,797 8x8 images of handwritten digits as 64 pixel columns, 10 classes;
- ``diabetes``: 442 patients, 10 measurements, a disease-progression score (regression).

Protocol. Per seed (``--seeds``, default 0, 1, 2), a stratified quarter of the rows (by target rank for
diabetes) is held out as the test set; the rest is the labelled pool that both methods get, and nothing else.
Both are timed from the start of fitting to a model ready to predict; scoring is outside the clock.

- ``boosting``: ``HistGradientBoostingClassifier`` / ``HistGradientBoostingRegressor`` with scikit-learn's
  defaults (early stopping is on by default only above 10,000 rows: off here), ``random_state`` the seed.
- ``tuneloop``: ``api.tune(pool, strategy="guided", budget=...)`` with the recipe's defaults and the seed; it
  splits its own validation rows off the pool and, where they are too few to tell MLPs apart, chooses by
  cross-validation and trains the chosen MLP on the whole pool. Its budget is ``--budget`` (60 s): boosting
  takes well under a second on these tables, so equal time is not a comparison this benchmark makes; the wall
  time of each is printed.

Printed per dataset: the test accuracy (classification) or RMSE (regression) of each method as a mean with a 95%
t-interval over seeds and every seed's value, the wall seconds, the paired difference, and whether it is beyond
noise (the 95% t-interval of the paired differences excludes 0). The CPU is printed first.

Reproduce (from the repository root, CPU):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/tables_vs_boosting.py --json benchmarks/results/tables_vs_boosting.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.data.tabular import TableExamples

DATASETS = ("wine", "breast_cancer", "digits", "diabetes")
LOADERS = {"wine": load_wine, "breast_cancer": load_breast_cancer, "digits": load_digits, "diabetes": load_diabetes}


def cpu() -> str:
    """The CPU's model name and whether it computes bf16 natively (which tuneloop's 'auto' precision follows)."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    native = "yes" if flags & {"avx512_bf16", "amx_bf16"} else "no (fp32 is the fast path)"
    return f"{model}, {torch.get_num_threads()} threads, native bf16: {native}"


def table(name: str) -> tuple[np.ndarray, np.ndarray, bool]:
    bunch = LOADERS[name]()
    regression = name == "diabetes"
    targets = bunch.target.astype(np.float64) if regression else np.asarray([f"class_{t}" for t in bunch.target])
    return np.asarray(bunch.data, dtype=np.float64), targets, regression


def split(targets: np.ndarray, regression: bool, seed: int, test_share: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """(pool rows, test rows): a stratified quarter held out, by class or, for a regressor, by target rank."""
    rng = np.random.default_rng(seed)
    groups = ([np.argsort(targets)[i:i + 4] for i in range(0, len(targets), 4)] if regression
              else [np.flatnonzero(targets == c) for c in np.unique(targets)])
    test = []
    for members in groups:
        members = rng.permutation(members)
        test.extend(members[:max(1, round(len(members) * test_share))].tolist())
    test_rows = np.asarray(sorted(test))
    return np.setdiff1d(np.arange(len(targets)), test_rows), test_rows


def examples(features: np.ndarray, targets: np.ndarray, rows: np.ndarray, name: str) -> TableExamples:
    columns = {f"x{j}": features[rows, j].tolist() for j in range(features.shape[1])}
    values = [float(t) if isinstance(t, (float, np.floating)) else str(t) for t in targets[rows]]
    return TableExamples(columns, values, [f"row {i}" for i in rows], name, "target")


def score(predicted: np.ndarray, true: np.ndarray, regression: bool) -> float:
    if regression:
        return float(np.sqrt(np.mean((np.asarray(predicted, dtype=np.float64) - true) ** 2)))
    return float(np.mean(np.asarray(predicted) == true))


def run_boosting(features, targets, pool, test, regression, seed) -> dict[str, Any]:
    started = time.perf_counter()
    model = (HistGradientBoostingRegressor(random_state=seed) if regression
             else HistGradientBoostingClassifier(random_state=seed))
    model.fit(features[pool], targets[pool])
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "score": score(model.predict(features[test]), targets[test], regression)}


def run_tuneloop(features, targets, pool, test, regression, seed, budget: str, name: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tables-") as workspace:
        started = time.perf_counter()
        result = api.tune(examples(features, targets, pool, name), budget=budget, workspace=workspace,
                          recipe=Recipe(seed=seed))
        seconds = time.perf_counter() - started
        predictions = result.best_run.predict(examples(features, targets, test, name))
        predicted = predictions.values if regression else np.asarray(predictions.labels)
    return {"seconds": seconds, "score": score(predicted, targets[test], regression),
            "stop_reason": result.stop_reason, "choice": result.choice,
            "trials": [{"kind": t.kind, "value": t.value, "reason": t.reason} for t in result.trials],
            "best_recipe": {k: v for k, v in result.best_run.recipe.to_dict().items()
                            if k in ("hidden_layers", "hidden_units", "learning_rate", "epochs", "weight_decay",
                                     "dropout", "augment", "mixup")}}


def interval(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    return float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated: {','.join(DATASETS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--budget", default="60s", help="tuneloop's budget per seed [60s]")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    names = [d for d in args.datasets.split(",") if d]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        parser.error(f"The '--datasets' option takes {', '.join(DATASETS)}. Got {', '.join(unknown)} instead.")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    print(f"CPU: {cpu()}; torch {torch.__version__}; tuneloop budget {args.budget} per seed", flush=True)
    results: dict[str, Any] = {"cpu": cpu(), "budget": args.budget, "datasets": {}}
    for name in names:
        features, targets, regression = table(name)
        measure = "RMSE (lower is better)" if regression else "accuracy"
        runs: dict[str, list[dict[str, Any]]] = {"boosting": [], "tuneloop": []}
        for seed in seeds:
            pool, test = split(targets, regression, seed)
            boosting = run_boosting(features, targets, pool, test, regression, seed)
            tuned = run_tuneloop(features, targets, pool, test, regression, seed, args.budget, name)
            runs["boosting"].append(boosting)
            runs["tuneloop"].append(tuned)
            print(f"{name} seed {seed} ({len(pool)} pool / {len(test)} test rows): boosting {measure} "
                  f"{boosting['score']:.4f} in {boosting['seconds']:.2f}s; tuneloop {tuned['score']:.4f} in "
                  f"{tuned['seconds']:.0f}s ({tuned['choice'] or tuned['stop_reason']})", flush=True)
        summary = {}
        for method, method_runs in runs.items():
            values = [r["score"] for r in method_runs]
            summary[method] = {"mean": statistics.mean(values), "ci95": interval(values), "values": values,
                               "seconds_mean": statistics.mean(r["seconds"] for r in method_runs)}
        differences = [t["score"] - b["score"] for t, b in zip(runs["tuneloop"], runs["boosting"], strict=True)]
        spread = interval(differences)
        better = (lambda d: d < 0) if regression else (lambda d: d > 0)
        mean_difference = statistics.mean(differences)
        if spread is None or abs(mean_difference) <= spread:
            verdict = "within noise"
        else:
            verdict = "tuneloop better beyond noise" if better(mean_difference) else "boosting better beyond noise"
        results["datasets"][name] = {"measure": measure, "summary": summary, "differences": differences,
                                     "verdict": verdict, "runs": runs}
        print(f"\n{name}: {measure}")
        print("| method | mean ± 95% CI | per seed | wall s |")
        print("|---|---:|---|---:|")
        for method, row in summary.items():
            ci = "n/a" if row["ci95"] is None else f"± {row['ci95']:.4f}"
            print(f"| {method} | {row['mean']:.4f} {ci} | {', '.join(f'{v:.4f}' for v in row['values'])} | "
                  f"{row['seconds_mean']:.1f} |")
        print(f"paired difference (tuneloop - boosting): {mean_difference:+.4f}"
              f"{'' if spread is None else f' ± {spread:.4f}'}: {verdict}\n", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
