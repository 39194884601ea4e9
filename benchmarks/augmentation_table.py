"""Does table augmentation help a small training set? The same MLP recipe with and without ``--augment``.

A few rows of one of scikit-learn's bundled tables (``--dataset``: breast cancer, 569 tumours, 30 numeric
measurements, benign or malignant; or wine, 178 wines, 13 measurements, 3 cultivars; both from the UCI
repository, shipped under scikit-learn's BSD licence) train tuneloop's MLP; the
best epoch is chosen on a separate validation sample, and every model is scored on the same held-out rows.
Each setting runs with several seeds. Printed: held-out accuracy and macro-F1 per seed, mean and standard
deviation per setting, and the paired differences.

Reproduce (from the repository root, CPU):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/augmentation_table.py --json benchmarks/results/augmentation_table.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
from peers import cpu_kind
from sklearn.datasets import load_breast_cancer, load_wine

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.data.tabular import load_table_examples
from tuneloop.training.metrics import classification_metrics


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("breast_cancer", "wine"), default="breast_cancer")
    parser.add_argument("--train-size", type=int, default=40)
    parser.add_argument("--val-size", type=int, default=60)
    parser.add_argument("--strength", type=float, default=0.3)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        if args.dataset == "wine":
            frame = load_wine(as_frame=True).frame
            frame["target"] = frame["target"].map({0: "cultivar_a", 1: "cultivar_b", 2: "cultivar_c"})
        else:
            frame = load_breast_cancer(as_frame=True).frame
            frame["target"] = frame["target"].map({0: "malignant", 1: "benign"})
        frame.to_csv(Path(root) / "table.csv", index=False)
        rows = load_table_examples(Path(root) / "table.csv")
        order = np.random.default_rng(0).permutation(len(rows))
        train = rows.subset(order[:args.train_size])
        val = rows.subset(order[args.train_size:args.train_size + args.val_size])
        test = rows.subset(order[args.train_size + args.val_size:])
        base = Recipe(learning_rate=1e-3, epochs=50, patience=0)
        print(f"{args.dataset}: {len(train)} train / {len(val)} validation / {len(test)} held-out rows; MLP "
              f"{base.hidden_layers}x{base.hidden_units}, lr {base.learning_rate}, {base.epochs} epochs")
        results: dict[str, list[dict[str, float]]] = {"none": [], f"augment {args.strength}": []}
        for seed in range(args.seeds):
            for setting, strength in (("none", 0.0), (f"augment {args.strength}", args.strength)):
                run = api.fit(train, val, workspace=Path(root) / "ws", recipe=base.replace(seed=seed, augment=strength))
                predicted = run.predict(test).labels
                index = {name: i for i, name in enumerate(run.classes)}
                true = np.array([index[str(t)] for t in test.targets])
                scores = classification_metrics(true, np.array([index[p] for p in predicted]), len(run.classes))
                results[setting].append({"seed": seed, **scores})
                print(f"  seed {seed}, {setting}: held-out accuracy {scores['accuracy']:.4f}, "
                      f"macro-F1 {scores['macro_f1']:.4f}", flush=True)
    print()
    print("| setting | held-out accuracy (mean ± sd) | held-out macro-F1 (mean ± sd) |")
    print("|---|---:|---:|")
    for setting, rows_ in results.items():
        acc, f1 = [r["accuracy"] for r in rows_], [r["macro_f1"] for r in rows_]
        print(f"| {setting} | {statistics.mean(acc):.4f} ± {sd(acc):.4f} | {statistics.mean(f1):.4f} ± {sd(f1):.4f} |")
    plain, augmented = results.values()
    diffs = [b["accuracy"] - a["accuracy"] for a, b in zip(plain, augmented, strict=True)]
    print(f"paired accuracy differences (augmented - none): {[round(d, 4) for d in diffs]}, "
          f"mean {statistics.mean(diffs):+.4f}, augmented higher in {sum(d > 0 for d in diffs)} of {len(diffs)}")
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": cpu_kind(), "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "results": results}, indent=2))


if __name__ == "__main__":
    main()
