"""Does a base trained from scratch help a few-shot task? Fine-tuning it against the same network from scratch.

Initial training, then fine-tuning: a small CNN is trained from scratch once, on ``--base-size`` images of
five Fashion-MNIST classes (T-shirt/top, Trouser, Pullover, Dress, Coat). The other five classes (Sandal,
Shirt, Sneaker, Bag, Ankle boot) are the target: ``--shots`` training images per class, and as many
separate ones per class for choosing the best epoch. For each seed (which draws a different few-shot sample
and seeds the training) the same network is trained on that sample three ways: fine-tuned from the base (its
weights the start, a new head for the new classes, every layer trainable), from scratch, and, to show what
the base's features alone are worth, the base frozen with only a new head trained; each with a learning rate
suited to its start. Every model is scored on all 5,000 test-split images of the five target
classes, which no run sees while training or choosing its best epoch. Printed: the base's validation
accuracy, held-out accuracy and macro-F1 per seed, mean and standard deviation per setting, and the paired
differences.

Data: Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; Zalando Research, MIT licence), read from the Debian
package dataset-fashion-mnist (``make fashion-mnist`` installs it).

Reproduce (from the repository root, CPU):

    make fashion-mnist
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scratch_then_finetune.py \\
        --json benchmarks/results/scratch_then_finetune.json
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
from fashion_sample import held_out_scores, image_examples, per_class
from peers import cpu_kind

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.data.fashion_mnist import CLASSES, load_fashion_mnist

BASE_CLASSES = (0, 1, 2, 3, 4)  # T-shirt/top, Trouser, Pullover, Dress, Coat
TARGET_CLASSES = (5, 6, 7, 8, 9)  # Sandal, Shirt, Sneaker, Bag, Ankle boot


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-size", type=int, default=20000, help="base training images (stratified, 5 classes)")
    parser.add_argument("--base-val-size", type=int, default=2000)
    parser.add_argument("--base-epochs", type=int, default=5)
    parser.add_argument("--base-lr", type=float, default=3e-3)
    parser.add_argument("--shots", type=int, default=3, help="target training images per class")
    parser.add_argument("--val-shots", type=int, default=10, help="target validation images per class")
    parser.add_argument("--width", type=int, default=64, help="channels of the CNN's last stage")
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--finetune-lr", type=float, default=3e-3)
    parser.add_argument("--scratch-lr", type=float, default=3e-3)
    parser.add_argument("--head-lr", type=float, default=1e-2, help="the frozen base's new head")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    rng = np.random.default_rng(0)
    base_train_ids = per_class(train_labels, BASE_CLASSES, args.base_size // len(BASE_CLASSES), rng)
    base_val_ids = per_class(train_labels, BASE_CLASSES, args.base_val_size // len(BASE_CLASSES), rng,
                             exclude=base_train_ids)
    test_ids = np.flatnonzero(np.isin(test_labels, TARGET_CLASSES))
    test = image_examples(test_images, test_labels, test_ids, "fashion-mnist test")
    network = Recipe(init="scratch", hidden_layers=args.stages, hidden_units=args.width)
    base_recipe = network.replace(learning_rate=args.base_lr, epochs=args.base_epochs, batch_size=128, patience=0)
    target_recipe = network.replace(epochs=args.epochs, patience=args.patience, batch_size=args.batch_size,
                                    trainable_layers="all")
    print(f"Fashion-MNIST: base {len(base_train_ids)} train / {len(base_val_ids)} validation images of "
          f"{', '.join(CLASSES[c] for c in BASE_CLASSES)}; target {args.shots} train / {args.val_shots} validation "
          f"per class of {', '.join(CLASSES[c] for c in TARGET_CLASSES)}, {len(test)} held-out test images")
    print(f"small CNN {args.stages} stages x {args.width}; base: lr {args.base_lr}, {args.base_epochs} epochs, batch "
          f"128; target: {args.epochs} epochs, patience {args.patience}, batch {args.batch_size}, lr fine-tune "
          f"{args.finetune_lr} / scratch {args.scratch_lr} / frozen base's head {args.head_lr}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    results: dict[str, list[dict[str, float]]] = {"fine-tuned base": [], "scratch": [], "frozen base, head only": []}
    with tempfile.TemporaryDirectory() as workspace:
        started = time.perf_counter()
        base = api.fit(image_examples(train_images, train_labels, base_train_ids, "fashion-mnist train"),
                       image_examples(train_images, train_labels, base_val_ids, "fashion-mnist train"),
                       model="small-cnn", workspace=workspace, recipe=base_recipe.replace(seed=0))
        base_scores = {"val_accuracy": base.metrics["val_accuracy"], "val_macro_f1": base.metrics["val_macro_f1"],
                       "best_epoch": base.metrics["best_epoch"], "seconds": time.perf_counter() - started}
        print(f"base: validation accuracy {base_scores['val_accuracy']:.4f}, macro-F1 "
              f"{base_scores['val_macro_f1']:.4f}, best epoch {base_scores['best_epoch']} "
              f"({base_scores['seconds']:.0f}s)", flush=True)
        settings = (("fine-tuned base", str(base.path), target_recipe.replace(init="pretrained",
                                                                               learning_rate=args.finetune_lr)),
                    ("scratch", "small-cnn", target_recipe.replace(learning_rate=args.scratch_lr)),
                    ("frozen base, head only", str(base.path), target_recipe.replace(
                        init="pretrained", learning_rate=args.head_lr, trainable_layers=0)))
        for seed in range(args.seeds):
            sample = np.random.default_rng(1000 + seed)
            train_ids = per_class(train_labels, TARGET_CLASSES, args.shots, sample)
            val_ids = per_class(train_labels, TARGET_CLASSES, args.val_shots, sample, exclude=train_ids)
            train = image_examples(train_images, train_labels, train_ids, "fashion-mnist train")
            val = image_examples(train_images, train_labels, val_ids, "fashion-mnist train")
            for setting, model, recipe in settings:
                started = time.perf_counter()
                run = api.fit(train, val, model=model, workspace=workspace, recipe=recipe.replace(seed=seed))
                scores = held_out_scores(run, test)
                results[setting].append({"seed": seed, "best_epoch": run.metrics["best_epoch"],
                                         "seconds": time.perf_counter() - started, **scores})
                print(f"  seed {seed}, {setting}: held-out accuracy {scores['accuracy']:.4f}, macro-F1 "
                      f"{scores['macro_f1']:.4f}, best epoch {run.metrics['best_epoch']} "
                      f"({time.perf_counter() - started:.1f}s)", flush=True)
    print()
    print("| setting | held-out accuracy (mean ± sd) | held-out macro-F1 (mean ± sd) | s per run |")
    print("|---|---:|---:|---:|")
    for setting, rows in results.items():
        acc, f1 = [r["accuracy"] for r in rows], [r["macro_f1"] for r in rows]
        print(f"| {setting} | {statistics.mean(acc):.4f} ± {sd(acc):.4f} | {statistics.mean(f1):.4f} ± {sd(f1):.4f} "
              f"| {statistics.mean(r['seconds'] for r in rows):.1f} |")
    for setting in ("fine-tuned base", "frozen base, head only"):
        for metric, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
            diffs = [a[metric] - b[metric] for a, b in zip(results[setting], results["scratch"], strict=True)]
            print(f"paired {name} differences ({setting} - scratch): {[round(d, 4) for d in diffs]}, mean "
                  f"{statistics.mean(diffs):+.4f} ± {sd(diffs):.4f}, base higher in {sum(d > 0 for d in diffs)} "
                  f"of {len(diffs)}")
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": cpu_kind(), "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "base": base_scores, "results": results}, indent=2))


if __name__ == "__main__":
    main()
