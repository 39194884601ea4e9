"""Scaling out: what running trials in worker processes or as Ray tasks costs per trial, and what it buys.

One study, the same trials, three ways:

- ``inline``: ``tune`` as it runs by default, every trial in the driver's own process;
- ``local``: ``tune --workers N``, N worker processes on this machine (the cores split between them);
- ``ray``: ``tune --executor ray --workers N``, Ray tasks on a local Ray cluster started for the study.

The study is a random search (``--trials`` trials, 16 by default, seed 0, no pruning, no seed check, no final
refit) of the tabular MLP on scikit-learn's digits (1,797 8x8 images of handwritten digits as 64 pixel columns, 10
classes; BSD licence, from the UCI repository), read from a CSV file as a user's would be. A random sampler draws the
same recipes whatever the order trials end in, so each way trains the same trials.

Printed per way: the study's wall seconds (from the call to the returned model, reading the data and starting
workers or the Ray cluster included), the seconds trials spent training (their runs' own clocks, summed), the
overhead per trial (wall seconds times the workers, less the training seconds, over the trials: what a trial
slot spent not training: starting a worker, reading the data there, scheduling, recording, diagnosing), the
median trial's part of it (from the driver's sending the trial to its recording it, less its training: what a
trial costs once the workers have started), and the speed-up over ``inline``. The CPU is printed first: on a
machine with 2 cores, N = 2 workers share the cores that one trial's 2 threads used inline, so a speed-up there
comes from using them better (two small trials on one thread each, their overheads overlapped), not from more
compute.

Reproduce (from the repository root, CPU, with ``pip install -e '.[ray]'``):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scale_out.py --json benchmarks/results/scale_out.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from peers import cpu_kind, cpu_model
from sklearn.datasets import load_digits

from tuneloop import api
from tuneloop.store.workspace import Workspace

WAYS = ("inline", "local", "ray")


def digits_csv(folder: Path) -> Path:
    digits = load_digits()
    path = folder / "digits.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"pixel_{i}" for i in range(digits.data.shape[1])] + ["label"])
        for row, label in zip(digits.data, digits.target, strict=True):
            writer.writerow([int(v) for v in row] + [f"digit_{label}"])
    return path


def run_way(way: str, data: Path, trials: int, workers: int, folder: Path) -> dict[str, Any]:
    workspace = folder / f"ws-{way}"
    used = 1 if way == "inline" else workers
    started = time.monotonic()
    result = api.tune(data, workspace=workspace, budget=f"{trials}trials", strategy="random", prune="none",
                      seed_check=False, refit=False, keep_models=None, workers=used,
                      executor="ray" if way == "ray" else None)
    wall = time.monotonic() - started
    with Workspace.open(workspace) as store:
        runs = {r.id: r for r in store.runs()}
    search = [t for t in result.trials if t.run_id is not None]
    trained = [float(runs[t.run_id].metrics.get("seconds", 0.0)) for t in search]
    training = sum(trained)
    # From the driver's sending a trial to its recording it, less the run's own training: the median trial's.
    dispatch = statistics.median(t.seconds - s for t, s in zip(search, trained, strict=True))
    return {"way": way, "workers": used, "trials": len(search), "wall_s": round(wall, 2),
            "training_s": round(training, 2), "overhead_per_trial_s": round((wall * used - training) / len(search), 2),
            "dispatch_s": round(dispatch, 2),
            "best_value": max(t.value for t in search if t.value is not None),
            "recipes": sorted(json.dumps(t.recipe.to_dict(), sort_keys=True) for t in search)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ways", default=",".join(WAYS), help="comma-separated: " + ",".join(WAYS))
    parser.add_argument("--json", help="also write every number here")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"CPU: {cpu_kind()}, {os.cpu_count()} cores; source {commit}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tuneloop-scale-out-") as tmp:
        folder = Path(tmp)
        data = digits_csv(folder)
        for way in args.ways.split(","):
            row = run_way(way, data, args.trials, args.workers, folder)
            rows.append(row)
            print(f"{way:>6} x{row['workers']}: {row['trials']} trials in {row['wall_s']:.1f}s wall, "
                  f"{row['training_s']:.1f}s training, overhead {row['overhead_per_trial_s']:.2f}s a trial "
                  f"(a median trial's {row['dispatch_s']:.2f}s), "
                  f"best validation macro-F1 {row['best_value']:.4f}", flush=True)
    inline = next((r for r in rows if r["way"] == "inline"), None)
    for row in rows:
        row["speed_up"] = round(inline["wall_s"] / row["wall_s"], 2) if inline else None
        row["same_trials_as_inline"] = inline is not None and row["recipes"] == inline["recipes"]
    print("\nway      workers  wall s  training s  overhead s/trial  median trial's  speed-up  same trials")
    for row in rows:
        print(f"{row['way']:<8} {row['workers']:>7} {row['wall_s']:>7.1f} {row['training_s']:>11.1f} "
              f"{row['overhead_per_trial_s']:>17.2f} {row['dispatch_s']:>15.2f} {row['speed_up'] or 0:>9.2f}  "
              f"{row['same_trials_as_inline']}")
    if args.json:
        payload = {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_kind": cpu_kind(), "source": commit,
                   "trials": args.trials, "rows": [{k: v for k, v in r.items() if k != "recipes"} for r in rows]}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
