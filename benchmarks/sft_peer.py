"""The peer side of ``instruction_tuning.py``: supervised fine-tuning of a causal LM with LoRA as a user of Hugging
Face ``Trainer`` and ``peft`` writes it, and the scoring both sides share.

trl is not installed, so the completion-only collation its ``SFTTrainer`` would do is written here the way a user
of plain ``Trainer`` writes it: prompt and completion tokenized apart, the end-of-sequence token after the
completion, labels -100 on the prompt and on padding, right padding in the collator.

The shared scoring (``validation_loss``, ``exact_match``) reads the model in fp32, whatever precision it trained
in, so that both sides are scored by the same code on the same numbers.

Run from the repository root, ``instruction_tuning.py`` imports this module as ``sft_peer`` (Python puts a
script's own folder first on the import path).
"""

from __future__ import annotations

import json
import math
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

IGNORED = -100  # the label the loss does not count (PyTorch's cross-entropy ignore_index)
SCORE_BATCH = 8  # examples per forward pass when scoring the validation loss
GENERATE_BATCH = 16  # prompts per greedy generation
EVALUATIONS_PER_EPOCH = 4  # points of the peer's validation curve per epoch


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str


def read_examples(path: str | Path) -> list[Example]:
    """The ``prompt``/``completion`` pairs of a JSON Lines file."""
    examples = []
    with open(path, encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if text.strip():
                row = json.loads(text)
                if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
                    raise ValueError(f"{path}, line {line}: expected text fields 'prompt' and 'completion'.")
                examples.append(Example(row["prompt"], row["completion"]))
    return examples


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- tokens -------------------------------------------------------------------------------------------------

def encode(tokenizer: Any, example: Example, max_length: int) -> dict[str, list[int]]:
    """Prompt and completion tokenized apart (as the model reads a prompt and then writes its answer), the
    end-of-sequence token after the completion so the model learns to stop, the prompt's labels ignored.

    An example longer than ``max_length`` is an error, not cut: a cut completion would teach the model to stop
    mid-answer, and tuneloop refuses such an example too, so both sides train on the same tokens."""
    prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    completion = [*tokenizer(example.completion, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    if len(prompt) + len(completion) > max_length:
        raise ValueError(f"An example has {len(prompt) + len(completion)} tokens (prompt {len(prompt)}, completion "
                         f"{len(completion)}), more than max_length {max_length}: {example.prompt[:60]!r}...")
    return {"input_ids": prompt + completion, "labels": [IGNORED] * len(prompt) + completion}


class CompletionCollator:
    """Right-pads a batch of encoded examples: padding gets the pad id, attention 0 and label -100."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        length = max(len(row["input_ids"]) for row in rows)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORED, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for r, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[r, :n] = torch.tensor(row["input_ids"])
            labels[r, :n] = torch.tensor(row["labels"])
            mask[r, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def load_tokenizer(folder: str | Path) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:  # batches of several lengths need one; no loss or answer reads it
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# -- the shared scoring -------------------------------------------------------------------------------------

@torch.inference_mode()
def validation_loss(model: Any, tokenizer: Any, examples: list[Example], max_length: int) -> tuple[float, int]:
    """The mean negative log-likelihood of a completion token over the whole set, token-weighted (the summed NLL
    of every completion token, end-of-sequence included, over their count), and that count."""
    model.eval()
    collate = CompletionCollator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    for start in range(0, len(examples), SCORE_BATCH):
        batch = collate([encode(tokenizer, e, max_length) for e in examples[start:start + SCORE_BATCH]])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        following = batch["labels"][:, 1:]  # position t predicts token t + 1
        learned = following != IGNORED
        # In fp32 and summed, so that batches of different sizes weigh by their tokens, not by their count.
        total += F.cross_entropy(logits[:, :-1][learned].float(), following[learned], reduction="sum").item()
        count += int(learned.sum())
    return total / count, count


def answer_text(generated: str) -> str:
    """What an answer is compared as: the text up to the first newline, stripped."""
    return generated.split("\n", 1)[0].strip()


@torch.inference_mode()
def greedy_answers(model: Any, tokenizer: Any, examples: list[Example]) -> list[str]:
    """Each prompt's greedy completion, at most the longest completion's tokens plus 2, decoded without special
    tokens. Prompts go in length-sorted batches, padded on the left so that every row's answer starts at the same
    column."""
    model.eval()
    prompts = [tokenizer(e.prompt, add_special_tokens=False)["input_ids"] for e in examples]
    longest_answer = max(len(tokenizer(e.completion, add_special_tokens=False)["input_ids"]) for e in examples)
    stops = sorted({tokenizer.eos_token_id, *_as_list(getattr(model.generation_config, "eos_token_id", None))}
                   - {None})
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(prompts)
    for start in range(0, len(order), GENERATE_BATCH):
        rows = order[start:start + GENERATE_BATCH]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]):] = 1
        generated = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                   max_new_tokens=longest_answer + 2, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=stops)
        for r, i in enumerate(rows):
            answer = generated[r, width:].tolist()
            end = next((at for at, token in enumerate(answer) if token in stops), len(answer))
            answers[i] = tokenizer.decode(answer[:end], skip_special_tokens=True)
    return answers


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def exact_match(answers: list[str], examples: list[Example]) -> float:
    """The share of answers that, cut at the first newline and stripped, equal the stripped completion."""
    return sum(answer_text(a) == e.completion.strip() for a, e in zip(answers, examples, strict=True)) / len(examples)


def score(model: Any, tokenizer: Any, val: list[Example], test: list[Example], max_length: int) -> dict[str, Any]:
    """What both sides are compared on: validation loss per completion token, and exact match on the test set
    after greedy generation; computed in fp32, timed."""
    started = time.perf_counter()
    model = model.float()
    loss, tokens = validation_loss(model, tokenizer, val, max_length)
    answers = greedy_answers(model, tokenizer, test)
    return {"val_loss": loss, "val_completion_tokens": tokens, "exact_match": exact_match(answers, test),
            "exact_match_n": len(test), "answers": [answer_text(a) for a in answers],
            "score_seconds": time.perf_counter() - started}


def score_folder(folder: str | Path, val: list[Example], test: list[Example], max_length: int) -> dict[str, Any]:
    """``score`` of a saved Hugging Face causal-LM folder (a fine-tune with its adapters merged)."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return score(model, load_tokenizer(folder), val, test, max_length)


# -- the peer -----------------------------------------------------------------------------------------------

class WallClock(TrainerCallback):
    """Times training apart from evaluation, stops training once ``wall_seconds`` of training are spent (checked
    after every step), and keeps the validation curve and the peak memory when training ends.

    Evaluation runs right after ``on_step_end`` and ends with ``on_evaluate``; the time between the two is the
    evaluation's, left out of the training seconds and of the budget (the curve's evaluations measure the run,
    they are not part of training it)."""

    def __init__(self, wall_seconds: float):
        self.wall_seconds = wall_seconds
        self.started = 0.0
        self.last_step_end = 0.0
        self.eval_seconds = 0.0
        self.ended = 0.0
        self.stopped_by_wall = False
        self.curve: list[dict[str, float]] = []
        self.peak_rss_mib = 0.0

    def train_seconds(self, now: float) -> float:
        return now - self.started - self.eval_seconds

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.last_step_end = time.perf_counter()
        if self.train_seconds(self.last_step_end) >= self.wall_seconds:
            self.stopped_by_wall = control.should_training_stop = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        now = time.perf_counter()
        self.eval_seconds += now - self.last_step_end
        self.curve.append({"step": state.global_step, "epoch": round(state.epoch, 3),
                           "seconds": now - self.started, "train_seconds": self.train_seconds(now),
                           "val_loss": metrics["eval_loss"]})

    def on_train_end(self, args, state, control, **kwargs):
        self.ended = time.perf_counter()
        self.peak_rss_mib = peak_rss_mib()


def peer_sft(train: str | Path, val: str | Path, test: str | Path, model_folder: str | Path, settings: dict[str, Any],
             wall_seconds: float, seed: int, precision: str = "fp32") -> dict[str, Any]:
    """LoRA supervised fine-tuning of ``model_folder`` on ``train`` with ``Trainer`` and ``peft``, at most
    ``settings["epochs"]`` epochs and ``wall_seconds`` of training; then ``score`` of the merged model on ``val``
    and ``test``. ``precision`` "bf16" trains under bf16 autocast (the weights stay fp32)."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    train_set, val_set, test_set = read_examples(train), read_examples(val), read_examples(test)
    tokenizer = load_tokenizer(model_folder)
    max_length = settings["max_length"]
    train_rows = [encode(tokenizer, e, max_length) for e in train_set]
    val_rows = [encode(tokenizer, e, max_length) for e in val_set]
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    lora = LoraConfig(task_type="CAUSAL_LM", r=settings["lora_rank"], lora_alpha=settings["lora_alpha"],
                      lora_dropout=settings["lora_dropout"], target_modules=list(settings["lora_targets"]),
                      bias="none")
    model = get_peft_model(model, lora)
    steps_per_epoch = math.ceil(len(train_rows) / settings["batch_size"])
    clock = WallClock(wall_seconds)
    with tempfile.TemporaryDirectory(prefix="sft-peer-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, seed=seed, num_train_epochs=settings["epochs"],
            per_device_train_batch_size=settings["batch_size"], per_device_eval_batch_size=settings["batch_size"],
            learning_rate=settings["learning_rate"], weight_decay=settings["weight_decay"],
            # transformers 5 has no warmup_ratio: a warmup_steps below 1 is the share of the steps.
            lr_scheduler_type="linear", warmup_steps=settings["warmup_ratio"], optim="adamw_torch_fused",
            eval_strategy="steps", eval_steps=max(1, round(steps_per_epoch / EVALUATIONS_PER_EPOCH)),
            save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(), bf16=precision == "bf16", dataloader_num_workers=0,
            # Batches of similar lengths: the least padding Trainer offers (its default draws them at random).
            train_sampling_strategy="group_by_length",
            include_num_input_tokens_seen="non_padding", label_names=["labels"], remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, data_collator=CompletionCollator(tokenizer.pad_token_id),
                          train_dataset=train_rows, eval_dataset=val_rows, processing_class=tokenizer,
                          callbacks=[clock])
        trainer.remove_callback(PrinterCallback)  # the harness prints one line per side instead
        trainer.train()
    seconds = time.perf_counter() - started
    peak_after_fit = peak_rss_mib()
    train_seconds = clock.train_seconds(clock.ended)
    tokens = trainer.state.num_input_tokens_seen  # the non-pad tokens of every training batch
    # Merged like tuneloop's saved model, so both are scored as the plain network they would be served as.
    merged = trainer.model.merge_and_unload()
    scores = score(merged, tokenizer, val_set, test_set, max_length)
    return {"train_tokens": tokens, "train_seconds": train_seconds, "eval_seconds": clock.eval_seconds,
            "tokens_per_s": tokens / train_seconds if train_seconds > 0 else None,
            "tokens_per_s_source": "Trainer's num_input_tokens_seen (non-padding) over training seconds",
            "peak_rss_mib": clock.peak_rss_mib, "peak_rss_after_fit_mib": peak_after_fit,
            "fit_seconds": seconds, "steps": trainer.state.global_step,
            "epochs_done": round(trainer.state.epoch or 0.0, 3), "steps_per_epoch": steps_per_epoch,
            "stopped_by_wall": clock.stopped_by_wall, "curve": clock.curve,
            "curve_loss": "Trainer's eval_loss: each batch's mean over its completion tokens, averaged over examples",
            **scores}
