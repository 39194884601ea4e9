"""Tasks: what is learned from which data. Each task reads and checks its data before anything is written,
and for a recipe prepares a fresh network and the inputs it trains on; the training loop, the study and the
workspace are the same for every task.

``text.TextTask`` classifies texts with a pretrained encoder; ``table.TableTask`` classifies or regresses
table rows with an MLP; ``image.ImageTask`` classifies images with a pretrained or from-scratch network.
``modality_of`` tells which a data source is for.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tuneloop.errors import ConfigError

MODALITIES = ("auto", "text", "tabular", "image")
PROSE_WORDS = 4
LABELS_FILE = "labels.json"  # a saved run's classes, in its head's order


@dataclass(frozen=True)
class Prepared:
    """One run's fresh network, the preprocessor saved with it, the module that trains (the network, or its
    trainable part on cached inputs), its training and validation inputs, what was cached (or None), and
    why nothing was where something could have been."""

    network: torch.nn.Module
    preprocessor: Any
    trainable: torch.nn.Module
    train_set: Any
    val_set: Any
    cached: str | None = None
    not_cached: str | None = None
    first_phase: Phase | None = None  # trained before the rest; then ``first_phase.then()`` is what trains


@dataclass(frozen=True)
class Phase:
    """A stage of a run trained before the recipe's own (contrastive tuning of the encoder on pairs): the module
    that trains, its examples, its recipe and objective; ``then`` gives what the rest of the run trains, once
    this stage has changed the network."""

    trainable: torch.nn.Module
    train_set: Any
    val_set: Any
    recipe: Any
    objective: Any
    then: Callable[[], Prepared]
    name: str = "pairs"


def modality_of(data: Any, requested: str = "auto", text_col: str | None = None,
                image_col: str | None = None) -> str:
    """"text", "tabular" or "image": as requested, else "image" for a folder (of class folders of images)
    or a table whose path column (``image_col``, or a common name) names image files, "text" when the data
    has a text column (named by ``text_col``, a name with a common one as a word, such as 'text' or
    'review_text', or a column of sentences), else "tabular"."""
    from tuneloop.data.files import read_table
    from tuneloop.data.images import ImageExamples, names_images
    from tuneloop.data.tabular import TableExamples
    from tuneloop.data.text import TEXT_COLUMNS, TextExamples

    if requested not in MODALITIES:
        raise ConfigError([f"The 'task' parameter must be one of {', '.join(MODALITIES)}. Got {requested!r} instead."])
    if requested != "auto":
        return requested
    if image_col is not None:
        return "image"
    if isinstance(data, TextExamples) or text_col is not None:
        return "text"
    if isinstance(data, TableExamples):
        return "tabular"
    if isinstance(data, ImageExamples):
        return "image"
    if not isinstance(data, (str, os.PathLike)):
        return "text"
    if os.path.isdir(data):
        return "image"
    table = read_table(data)
    if names_images(table):
        return "image"
    columns = table.columns
    named = any(set(re.split(r"[^a-z0-9]+", name.lower())) & set(TEXT_COLUMNS) for name in columns)
    return "text" if named or any(_holds_prose(values) for values in columns.values()) else "tabular"


def _holds_prose(values: list[Any]) -> bool:
    """Most of the column's cells are text of at least PROSE_WORDS words: sentences, not categories."""
    cells = [v for v in values if isinstance(v, str) and v.strip()]
    return bool(cells) and sum(len(v.split()) >= PROSE_WORDS for v in cells) >= len(cells) / 2


def saved_classes(model: str | os.PathLike | None) -> list[str] | None:
    """The classes of the saved run whose model folder is ``model``, in its head's order (an empty list for a
    regressor), or None where ``model`` is not a saved run's folder (a backbone, an architecture's name)."""
    import json
    from pathlib import Path

    from tuneloop.models.hf_text import ADAPTER_FILE  # every adapter writes this file

    folder = Path(model) if model is not None else None
    if folder is None or not (folder / ADAPTER_FILE).is_file() or not (folder / LABELS_FILE).is_file():
        return None
    return list(json.loads((folder / LABELS_FILE).read_text()))


def classes_keeping(known: list[str], labels: list[str]) -> list[str]:
    """An update's classes: the known ones in their order, then the labels' new ones, sorted."""
    return [*known, *sorted(set(labels) - set(known))]


def training_precision(task: Any, requested: str, device: torch.device, recipe: Any = None) -> str:
    """The precision a run of ``task`` trains in: as requested; for "auto", fp32 where the device does not
    compute bf16 natively, else whichever of fp32 and bf16 trains the task's network faster there, measured
    once per machine (``training.precision_probe``; MiniLM on an H200 and EfficientNet's depthwise
    convolutions on CPUs and GPUs both trained faster in fp32). Without a ``recipe`` to measure with, the
    fixed rule: bf16, except for a task whose network trains faster in fp32 (EfficientNet, measured at 64 px,
    channels-last: on a 2-core CPU 298 samples/s fp32 against 215 bf16, benchmarks/image_throughput.py; on an
    H200 2,082 against 1,333, benchmarks/cuda_check.py)."""
    from tuneloop.training.device import bf16_is_fast, resolve_precision
    from tuneloop.training.precision_probe import probe_training_precision

    if requested != "auto":
        return resolve_precision(requested, device)
    if not bf16_is_fast(device):
        return "fp32"
    if recipe is not None and hasattr(task, "prepare"):
        return probe_training_precision(task, recipe, device, network_of(task, recipe))
    return "fp32" if getattr(task, "trains_faster_in_fp32", False) else "bf16"


NETWORK_KNOBS = ("max_length", "hidden_layers", "hidden_units", "lora_rank")  # a recipe's knobs that shape it


def network_of(task: Any, recipe: Any) -> str:
    """What a precision measurement holds for: the kind of task, its backbone (for images, at their size and
    channels), and the recipe's knobs that shape the network."""
    pixels = getattr(task.train, "pixels", None)
    shape = f" {tuple(pixels.shape[1:])}" if pixels is not None else ""
    knobs = ", ".join(f"{k} {getattr(recipe, k)}" for k in NETWORK_KNOBS)
    return f"{type(task).__name__} {task.backbone}{shape}, {knobs}"
