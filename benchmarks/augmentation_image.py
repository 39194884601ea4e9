"""Does image augmentation help a small training set? The same small-CNN recipe with and without ``--augment``.

``--train-per-class`` images of each of Fashion-MNIST's ten classes train tuneloop's small CNN from scratch;
the best epoch is chosen on a separate validation sample (``--val-per-class`` per class), and every model is
scored on the same ``--test-size`` held-out test-split images (stratified), which no run sees while training
or choosing its best epoch. Three settings share each seed's recipe: no augmentation, ``--augment
--strength`` (random resized crops, flips, rotation, brightness and contrast, drawn afresh every epoch), and
that augmentation with ``--mixup`` (the share of batches mixed by mixup or CutMix; 0 leaves this setting
out). Each seed draws a different training and validation sample, which the settings share, and seeds the
training. Printed: held-out accuracy and macro-F1 per seed, mean and standard deviation per setting, and the
paired differences from no augmentation.

Data: Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; Zalando Research, MIT licence), read from the Debian
package dataset-fashion-mnist (``make fashion-mnist`` installs it).

Reproduce (from the repository root, CPU):

    make fashion-mnist
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/augmentation_image.py --json benchmarks/results/augmentation_image.json
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


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-class", type=int, default=20)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--test-size", type=int, default=10000, help="held-out test images (stratified)")
    parser.add_argument("--strength", type=float, default=0.3)
    parser.add_argument("--mixup", type=float, default=0.3, help="0 leaves out the setting with mixup")
    parser.add_argument("--model", choices=("small-cnn", "efficientnet-lite0"), default="small-cnn",
                        help="efficientnet-lite0: its ImageNet weights, every layer fine-tuned, images at 64 px")
    parser.add_argument("--width", type=int, default=64, help="channels of the CNN's last stage")
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    test_ids = per_class(test_labels, range(len(CLASSES)), args.test_size // len(CLASSES), np.random.default_rng(0))
    test = image_examples(test_images, test_labels, test_ids, "fashion-mnist test")
    base = Recipe(init="scratch", hidden_layers=args.stages, hidden_units=args.width, learning_rate=args.lr,
                  epochs=args.epochs, batch_size=args.batch_size, patience=0)
    if args.model == "efficientnet-lite0":
        base = base.replace(init="pretrained", trainable_layers="all")
    settings = {"none": base, f"augment {args.strength}": base.replace(augment=args.strength)}
    if args.mixup > 0:
        settings[f"augment {args.strength} + mixup {args.mixup}"] = base.replace(augment=args.strength,
                                                                                 mixup=args.mixup)
    network = (f"small CNN {args.stages} stages x {args.width}" if args.model == "small-cnn"
               else "EfficientNet-Lite0 (ImageNet weights), every layer")
    print(f"Fashion-MNIST: {args.train_per_class} train / {args.val_per_class} validation images per class (10 "
          f"classes, a new sample per seed), {len(test)} held-out test images; {network}, lr {args.lr}, "
          f"{args.epochs} epochs, batch {args.batch_size}; torch {torch.__version__}, {torch.get_num_threads()} "
          "threads")
    results: dict[str, list[dict[str, float]]] = {setting: [] for setting in settings}
    with tempfile.TemporaryDirectory() as workspace:
        for seed in range(args.seeds):
            sample = np.random.default_rng(1000 + seed)
            train_ids = per_class(train_labels, range(len(CLASSES)), args.train_per_class, sample)
            val_ids = per_class(train_labels, range(len(CLASSES)), args.val_per_class, sample, exclude=train_ids)
            train = image_examples(train_images, train_labels, train_ids, "fashion-mnist train")
            val = image_examples(train_images, train_labels, val_ids, "fashion-mnist train")
            for setting, recipe in settings.items():
                started = time.perf_counter()
                run = api.fit(train, val, model=args.model, workspace=workspace, recipe=recipe.replace(seed=seed))
                scores = held_out_scores(run, test)
                results[setting].append({"seed": seed, "best_epoch": run.metrics["best_epoch"],
                                         "seconds": time.perf_counter() - started, **scores})
                print(f"  seed {seed}, {setting}: held-out accuracy {scores['accuracy']:.4f}, macro-F1 "
                      f"{scores['macro_f1']:.4f}, best epoch {run.metrics['best_epoch']} "
                      f"({time.perf_counter() - started:.0f}s)", flush=True)
    print()
    print("| setting | held-out accuracy (mean ± sd) | held-out macro-F1 (mean ± sd) | s per run |")
    print("|---|---:|---:|---:|")
    for setting, rows in results.items():
        acc, f1 = [r["accuracy"] for r in rows], [r["macro_f1"] for r in rows]
        print(f"| {setting} | {statistics.mean(acc):.4f} ± {sd(acc):.4f} | {statistics.mean(f1):.4f} ± {sd(f1):.4f} "
              f"| {statistics.mean(r['seconds'] for r in rows):.0f} |")
    plain, *augmented = results.items()
    for setting, rows in augmented:
        for metric, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
            diffs = [b[metric] - a[metric] for a, b in zip(plain[1], rows, strict=True)]
            print(f"paired {name} differences ({setting} - none): {[round(d, 4) for d in diffs]}, mean "
                  f"{statistics.mean(diffs):+.4f} ± {sd(diffs):.4f}, higher in {sum(d > 0 for d in diffs)} "
                  f"of {len(diffs)}")
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": cpu_kind(), "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "results": results}, indent=2))


if __name__ == "__main__":
    main()
