"""Instruction data for a causal language model: reading it, tokenizing it so that the loss covers the answer
only, and packing short examples into one sequence without letting them see each other.

An example is a prompt and its completion, in one of the two shapes supervised fine-tuning uses:

- ``{"prompt": "...", "completion": "..."}``: plain text, used as it is (the model reads the prompt and learns
  to continue it with the completion);
- ``{"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", "content": "..."}]}``: a chat,
  rendered with the model's own chat template; the last message is the assistant's answer, the completion.

Either is a JSON Lines file (or a CSV/TSV/Parquet table with ``prompt`` and ``completion`` columns).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop.data import saved_as, write_meta
from tuneloop.data.files import as_text, read_table
from tuneloop.errors import DataError

IGNORED = -100  # the label of a token the loss does not count (PyTorch's cross-entropy ignore_index)
ROLES = ("system", "user", "assistant", "tool")
MAX_LISTED = 5


@saved_as("instructions")
@dataclass(frozen=True)
class InstructionExamples:
    """Prompts (plain text, or the chat messages before the answer) and their completions (None where read
    without them: prompts to answer), each with its place in the source file for error messages."""

    prompts: list[str | list[dict[str, str]]]
    completions: list[str] | None
    locations: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, indices: list[int] | np.ndarray) -> InstructionExamples:
        completions = None if self.completions is None else [self.completions[i] for i in indices]
        return InstructionExamples([self.prompts[i] for i in indices], completions,
                                   [self.locations[i] for i in indices], self.source)

    def joined(self, other: InstructionExamples) -> InstructionExamples:
        """These examples, then ``other``'s (training and validation examples pooled)."""
        completions = (None if self.completions is None or other.completions is None
                       else [*self.completions, *other.completions])
        return InstructionExamples([*self.prompts, *other.prompts], completions,
                                   [*self.locations, *other.locations], self.source)

    def concat(self, other: InstructionExamples) -> InstructionExamples:
        """These examples, then ``other``'s, as one set (of both sources)."""
        source = self.source if self.source == other.source else f"{self.source} + {other.source}"
        return dataclasses.replace(self.joined(other), source=source)

    @property
    def has_labels(self) -> bool:
        return self.completions is not None  # the completion is what is learned

    def class_labels(self) -> list[str]:
        raise ValueError(f"{self.source}: instructions have completions, not classes.")

    def save(self, folder: Path, stem: str) -> None:
        write_meta(folder, stem, {"kind": self.saved_name, "prompts": self.prompts, "completions": self.completions,
                                  "locations": self.locations, "source": self.source})

    @classmethod
    def load_saved(cls, folder: Path, stem: str, meta: dict) -> InstructionExamples:
        return cls(meta["prompts"], meta["completions"], meta["locations"], meta["source"])

    def fingerprint(self) -> str:
        """A short hash of the prompts and completions, so a run records exactly which data it saw."""
        digest = hashlib.sha256()
        completions = self.completions if self.completions is not None else [""] * len(self)
        for prompt, completion in zip(self.prompts, completions, strict=True):
            digest.update(json.dumps(prompt, sort_keys=True).encode() + b"\x1f" + completion.encode() + b"\x1e")
        return digest.hexdigest()[:16]


def holds_instructions(column_names: set[str] | list[str]) -> bool:
    """Whether a table's columns are instructions: a 'messages' column, or 'prompt' (and 'completion')."""
    names = set(column_names)
    return "messages" in names or "prompt" in names


def read_instructions(path: str | Path, labelled: bool = True) -> InstructionExamples:
    """The examples of a file, every row checked: a DataError names the file, the line and the field of the
    first problem, with what was expected and what was found. Without ``labelled``, prompts alone are read (a
    chat's messages whole, unless the last is the assistant's, which is then left out)."""
    table = read_table(path)
    names = set(table.column_names)
    if not table.locations:
        raise DataError(f"{table.path}: no examples.")
    if "messages" in names:
        read = [_chat(table.path, where, value, labelled)
                for where, value in zip(table.locations, table.columns["messages"], strict=True)]
        prompts = [prompt for prompt, _ in read]
        completions = [completion for _, completion in read] if labelled else None
    elif "prompt" in names and ("completion" in names or not labelled):
        prompts = [_field(table.path, where, "prompt", table.columns["prompt"][i])
                   for i, where in enumerate(table.locations)]
        completions = ([_field(table.path, where, "completion", table.columns["completion"][i])
                        for i, where in enumerate(table.locations)] if labelled else None)
    else:
        wanted = "'prompt' and 'completion' fields" if labelled else "a 'prompt' field"
        raise DataError(f"{table.path}: expected a 'messages' field (a chat) or {wanted}. "
                        f"Found: {', '.join(sorted(names)) or 'no fields'}.")
    return InstructionExamples(prompts, completions, list(table.locations), str(table.path))


def _field(path: Path, where: str, name: str, value: Any) -> str:
    text = as_text(value) if not isinstance(value, (dict, list)) else None
    if text is None:
        raise DataError(f"{path}, {where}, field '{name}': expected non-empty text, found {_shown(value)}.")
    return value if isinstance(value, str) else text


def _chat(path: Path, where: str, messages: Any, labelled: bool = True) -> tuple[list[dict[str, str]], str]:
    """A chat's messages before the answer, and the answer (the last message, the assistant's). Unlabelled: the
    messages to answer (the last, where it is the assistant's, left out) and an empty answer."""
    least = 2 if labelled else 1
    if not isinstance(messages, list) or len(messages) < least:
        shape = "at least two messages (the last the assistant's answer)" if labelled else "at least one message"
        raise DataError(f"{path}, {where}, field 'messages': expected a list of {shape}, found {_shown(messages)}.")
    checked = []
    for n, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(
                message.get("content"), str) or not message["content"].strip():
            raise DataError(f"{path}, {where}, field 'messages', message {n}: expected an object with a 'role' "
                            f"({', '.join(ROLES)}) and non-empty text 'content', found {_shown(message)}.")
        checked.append({"role": message["role"], "content": message["content"]})
    if not labelled:
        return (checked[:-1] if checked[-1]["role"] == "assistant" and len(checked) > 1 else checked), ""
    if checked[-1]["role"] != "assistant":
        raise DataError(f"{path}, {where}, field 'messages': the last message must be the assistant's answer (what "
                        f"is learned); found role '{checked[-1]['role']}'.")
    return checked[:-1], checked[-1]["content"]


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# -- tokens -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Encoded:
    """One example as token ids, and the labels the loss reads: the completion's tokens, the prompt's ignored."""

    input_ids: list[int]
    labels: list[int]

    @property
    def completion_tokens(self) -> int:
        return sum(label != IGNORED for label in self.labels)


def prompt_text(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """What the model reads before it answers: a plain prompt as it is; a chat rendered with the model's chat
    template, up to the point where the assistant's answer starts."""
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the examples are chats ('messages'), and the model has no chat template to render them "
                        "with: give 'prompt' and 'completion' fields instead, or a model with a chat template.")
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def completion_text(tokenizer: Any, prompt: str | list[dict[str, str]], completion: str) -> str:
    """What the model learns to write after the prompt: for a chat, the template's rendering of the answer
    (with its end-of-turn marker); for plain text, the completion."""
    if isinstance(prompt, str):
        return completion
    before = prompt_text(tokenizer, prompt)
    whole = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": completion}], tokenize=False)
    if not whole.startswith(before):  # a template that rewrites earlier turns once an answer follows
        raise DataError("the model's chat template renders a conversation differently once it has an answer, so "
                        "the answer cannot be told apart from the prompt; use 'prompt' and 'completion' fields.")
    return whole[len(before):]


def encode(tokenizer: Any, examples: InstructionExamples, max_length: int) -> list[Encoded]:
    """Each example's tokens: the prompt's and the completion's, tokenized apart (as the model reads a prompt and
    then writes its answer), with the end-of-sequence token after a plain completion so the model learns to
    stop. An example longer than ``max_length`` tokens is an error naming it (every such one is counted), not
    cut: a cut answer would teach the model to stop mid-sentence."""
    encoded, too_long = [], []
    eos = tokenizer.eos_token_id
    for prompt, completion, where in zip(examples.prompts, examples.completions, examples.locations, strict=True):
        before = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        after = tokenizer(completion_text(tokenizer, prompt, completion), add_special_tokens=False)["input_ids"]
        if isinstance(prompt, str) and eos is not None:
            after = [*after, eos]
        if len(before) + len(after) > max_length:
            too_long.append(f"{where} ({len(before) + len(after)} tokens: prompt {len(before)}, completion "
                            f"{len(after)})")
            continue
        encoded.append(Encoded([*before, *after], [IGNORED] * len(before) + list(after)))
    if too_long:
        listed = "; ".join(too_long[:MAX_LISTED]) + (f"; and {len(too_long) - MAX_LISTED} more"
                                                     if len(too_long) > MAX_LISTED else "")
        raise DataError(f"{examples.source}: {len(too_long)} of {len(examples)} examples are longer than "
                        f"max_length {max_length} tokens: {listed}. Shorten them, or raise --max-length.")
    return encoded


def encode_prompts(tokenizer: Any, examples: InstructionExamples, max_length: int) -> list[list[int]]:
    """Each example's prompt as the model reads it before answering; a prompt of ``max_length`` tokens or more
    (no room left to answer) is an error naming it."""
    encoded, too_long = [], []
    for prompt, where in zip(examples.prompts, examples.locations, strict=True):
        ids = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        if len(ids) >= max_length:
            too_long.append(f"{where} ({len(ids)} tokens)")
        encoded.append(ids)
    if too_long:
        listed = "; ".join(too_long[:MAX_LISTED]) + (f"; and {len(too_long) - MAX_LISTED} more"
                                                     if len(too_long) > MAX_LISTED else "")
        raise DataError(f"{examples.source}: {len(too_long)} of {len(examples)} prompts leave no room for an answer "
                        f"in max_length {max_length} tokens: {listed}. Shorten them.")
    return encoded


@dataclass(frozen=True)
class Packed:
    """Rows of examples laid end to end, padded to the longest row. ``segments`` marks which example of its row
    each token belongs to, so that positions restart and attention stays inside each example."""

    input_ids: torch.Tensor  # rows x length (0 where a row is shorter)
    labels: torch.Tensor  # IGNORED on prompts and padding
    position_ids: torch.Tensor  # 0, 1, ... from each example's start
    segments: torch.Tensor  # which example of its row a token belongs to (1, 2, ...; 0: padding)

    def attention_mask(self) -> torch.Tensor:
        """The 4D mask (rows x 1 x length x length, True where a token may look): a token sees the tokens
        before it in its own example only, so packed examples train as if each were alone. Boolean, so it
        suits any precision the model computes in."""
        length = self.segments.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        allowed = causal & (self.segments[:, :, None] == self.segments[:, None, :]) & (self.segments[:, :, None] > 0)
        allowed |= torch.eye(length, dtype=torch.bool)  # padding sees itself: no row of the mask is empty
        return allowed[:, None]


def laid_out(rows: list[list[Encoded]]) -> Packed:
    """``rows`` as tensors, each row's examples end to end."""
    length = max(sum(len(e.input_ids) for e in row) for row in rows)
    shape = (len(rows), length)
    ids, labels = torch.zeros(shape, dtype=torch.long), torch.full(shape, IGNORED, dtype=torch.long)
    positions, segments = torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for number, example in enumerate(members, start=1):
            n = len(example.input_ids)
            ids[r, at:at + n] = torch.tensor(example.input_ids)
            labels[r, at:at + n] = torch.tensor(example.labels)
            positions[r, at:at + n] = torch.arange(n)
            segments[r, at:at + n] = number
            at += n
    return Packed(ids, labels, positions, segments)


@dataclass(frozen=True)
class InstructionRows:
    """What the training loop trains and validates on: ``rows`` of examples, one each as ``one_per_row`` makes
    them (a validation example's loss is its own). Where ``packs`` (``for_training``), a batch's examples are
    packed into as few rows as ``packed`` fits them in, so a batch still holds ``batch_size`` examples (the steps
    an epoch takes do not change) but computes less padding. A batch is the network's inputs (token ids, the 4D
    mask, positions, and the ids each position should predict) and, as labels, each row's count of learned
    tokens; its ``indices`` are the examples it holds."""

    rows: list[list[Encoded]]
    packs: bool = False

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([sum(len(e.input_ids) for e in row) for row in self.rows], dtype=np.int64)

    @property
    def label_ids(self) -> list[int]:
        return [sum(e.completion_tokens for e in row) for row in self.rows]

    @property
    def tokens(self) -> int:
        """Every token of every example (prompt and answer): what a pass over them reads."""
        return int(self.lengths.sum())

    def examples(self) -> list[Encoded]:
        return [example for row in self.rows for example in row]

    def batch(self, indices: np.ndarray):
        from tuneloop.data.batches import Batch

        rows = [self.rows[i] for i in indices]
        if self.packs:
            rows = packed([example for row in rows for example in row])
        laid = laid_out(rows)
        inputs = {"input_ids": laid.input_ids, "attention_mask": laid.attention_mask(),
                  "position_ids": laid.position_ids, "targets": laid.labels}
        return Batch(inputs, torch.tensor([sum(e.completion_tokens for e in row) for row in rows]),
                     np.asarray(indices))


def one_per_row(encoded: list[Encoded]) -> InstructionRows:
    """Each example a row of its own (validation: each example's loss is its own)."""
    return InstructionRows([[example] for example in encoded])


def for_training(encoded: list[Encoded]) -> InstructionRows:
    """Each example a row of its own, a batch's examples packed (``packed``) when it is drawn."""
    return InstructionRows([[example] for example in encoded], packs=True)


def packed(examples: list[Encoded]) -> list[list[Encoded]]:
    """``examples`` laid end to end into as few rows as first fit, longest first, puts them in, each row at most
    as long as the longest example (which is what a batch of them is padded to anyway): the padding the shorter
    examples would leave is filled with other examples, and no row costs more attention than the longest
    example alone. An example never splits across rows."""
    if not examples:
        return []
    order = sorted(examples, key=lambda e: -len(e.input_ids))
    capacity = len(order[0].input_ids)
    rows: list[list[Encoded]] = []
    room: list[int] = []
    for example in order:
        size = len(example.input_ids)
        slot = next((i for i, left in enumerate(room) if left >= size), None)
        if slot is None:
            rows.append([])
            room.append(capacity)
            slot = len(rows) - 1
        rows[slot].append(example)
        room[slot] -= size
    return rows


def write_instructions(examples: InstructionExamples, path: str | Path) -> Path:
    """``examples`` as a JSON Lines file of ``prompt``/``completion`` (or ``messages``) objects, written whole or
    not at all: what ``read_instructions`` reads back."""
    from tuneloop.store.atomic import write_text_atomic

    lines = []
    for prompt, completion in zip(examples.prompts, examples.completions, strict=True):
        row = ({"prompt": prompt, "completion": completion} if isinstance(prompt, str)
               else {"messages": [*prompt, {"role": "assistant", "content": completion}]})
        lines.append(json.dumps(row, ensure_ascii=False))
    write_text_atomic(Path(path), "\n".join(lines) + "\n")
    return Path(path)
