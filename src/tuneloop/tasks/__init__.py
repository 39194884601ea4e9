"""Tasks: what is learned from which data. Each kind of data is one module that implements ``Task`` and
registers itself: it reads and checks its data before anything is written, for a recipe prepares a fresh
network and the inputs it trains on, and reads, predicts and embeds new data for a saved run; the training
loop, the study, the workspace and the registry are the same for every kind.

``text.TextTask`` classifies texts with a pretrained encoder; ``table.TableTask`` classifies or regresses
table rows with an MLP; ``image.ImageTask`` classifies images with a pretrained or from-scratch network.
``modality_of`` tells which a data source is for; ``DataOptions`` say how it was read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch

from tuneloop.errors import ConfigError

if TYPE_CHECKING:
    from tuneloop.config import Recipe
    from tuneloop.tuning.family import Family
    from tuneloop.tuning.strategies import DataFacts

PROSE_WORDS = 4
LABELS_FILE = "labels.json"  # a saved run's classes, in its head's order


@dataclass(frozen=True)
class Predictions:
    """A classifier's labels and class probabilities, or a regressor's ``values`` (labels and classes empty)."""

    labels: list[str]
    probabilities: np.ndarray  # examples x classes
    classes: list[str]
    agreement_with_fp32: float | None = None  # int8 only: share of sampled labels that fp32 predicts too
    values: np.ndarray | None = None  # regression: the predicted targets, in their own units
    texts: list[str] | None = None  # a language model: each prompt's completion
    precision: str | None = None  # where "auto" was asked for texts: what it chose, and why
    precision_reason: str | None = None


@dataclass(frozen=True)
class DataOptions:
    """How a task's examples are read and split, stored with every run, study and registered version so that
    the same examples can be read again: the kind of data ("auto": told by the data), the columns, the side
    images are resized to, the validation share and the seed of the split, and whether a separate validation
    source was given (then nothing is split off). Series: the time and series-id columns, the points
    forecast ahead and the points in a season (None: from the frequency)."""

    task: str = "auto"
    text_col: str | None = None
    label_col: str | None = None
    image_col: str | None = None
    image_size: int | None = None
    val_fraction: float = 0.2
    seed: int = 0
    val_given: bool = False
    time_col: str | None = None
    series_col: str | None = None
    horizon: int | None = None
    season: int | None = None

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any] | None, **defaults: Any) -> DataOptions:
        """From what a run, a study or a registered version stored (other keys ignored), with ``defaults`` for
        what it does not hold (a study stores its seed in its recipe; older records hold fewer options)."""
        names = {f.name for f in fields(cls)}
        return cls(**{**defaults, **{k: v for k, v in (stored or {}).items() if k in names}})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def fewest_per_class(labels: Sequence[Any] | None) -> int | None:
    """Examples of the rarest class among ``labels`` (None without labels)."""
    if not labels:
        return None
    _, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    return int(counts.min())


def label_folds(task: Any, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold splits of a task's pooled examples by their labels (a regressor's by value rank):
    examples that do not depend on each other, so any split of them is fair."""
    from tuneloop.tuning.selection import folds

    return folds(task.pool_labels(), k, seed, regression=task.objective.predicts_values)


def class_ids(examples: Any, classes: list[str]) -> np.ndarray:
    """The class ids of labelled examples' labels in a run's ``classes`` (a label it does not know is an error
    naming it)."""
    from tuneloop.data.text import check_validation_labels

    check_validation_labels(examples, classes)
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[label] for label in examples.labels])


def majority_rate(labels: Sequence[Any]) -> dict[str, float]:
    """What a classifier that learned nothing scores on examples labelled ``labels``: the share of the most
    common class (always answering it)."""
    _, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    return {"majority_class_rate": float(counts.max() / counts.sum())}


@dataclass
class DataSource:
    """What telling the kind of data looks at: the data as given (a file or folder, examples in memory, a list
    of texts) and the options; a file's table is read once, where a kind asks for it."""

    data: Any
    options: DataOptions

    @property
    def is_path(self) -> bool:
        return isinstance(self.data, (str, os.PathLike))

    @property
    def is_folder(self) -> bool:
        return self.is_path and os.path.isdir(self.data)

    @cached_property
    def table(self) -> Any:
        """The file's table (None for a folder, or data that is not a file)."""
        from tuneloop.data.files import read_table

        return read_table(self.data) if self.is_path and not self.is_folder else None


class KindDefaults:
    """What a kind of data is where it says nothing else: every kind's task class inherits these, so that no module
    outside a kind asks whether a task has a member, only what it is."""

    predicts_text: ClassVar[bool] = False  # its predictions are generated text (Predictions.texts)
    averages_predictions: ClassVar[bool] = True  # an ensemble of its runs averages their predictions
    target_name: ClassVar[str] = "target values"  # what a drift check calls the targets it compares

    def chance_loss(self) -> float | None:
        """The validation loss of a model that learned nothing, where the kind measures one (None: the
        diagnosis reads chance from the objective: ln(classes), or the mean's error)."""
        return None

    def final_scores(self, network: Any, preprocessor: Any, device: torch.device, precision: str,
                     trained: dict[str, Any]) -> dict[str, Any]:
        """What a finished run of this kind measures beyond its epochs' scores, given the scores so far
        (``trained``); nothing by default."""
        return {}


class Task(Protocol):
    """What every kind of data implements, in its own module, registered by its ``modality`` (``register``).

    Reading data: ``claims`` says whether data is this kind's (for ``--task auto``; kinds are asked in
    ``claim_order``), ``read`` loads and checks it into a task. A task holds checked training and validation
    examples and, for a recipe, prepares a fresh network and the inputs it trains on (``prepare``); the family
    it names (``tuning.family``) holds its rule table, search space and first recipe. A saved run of this kind
    (``runs.Run``, whose ``task`` is this class) reads new data as it read its training data (``read_like``),
    predicts, scores and embeds it. The training loop, the study, the workspace and the registry are the same
    for every kind; no module outside a kind's own one asks which kind it has.
    """

    modality: ClassVar[str]  # what --task names: "text", "tabular", "image"
    claim_order: ClassVar[int]  # asked earlier where several kinds could read the data
    adapter_name: ClassVar[str]  # the model adapter its runs are saved with
    default_model: ClassVar[str]  # what it trains where no model is named, in words
    knobs: ClassVar[frozenset[str]]  # the recipe knobs that apply to it (COMMON_KNOBS and its own)
    predicts_text: ClassVar[bool]  # these three, chance_loss and final_scores: KindDefaults has them, a kind says
    # only where it differs
    averages_predictions: ClassVar[bool]
    target_name: ClassVar[str]
    train: Any
    val: Any
    data_options: DataOptions | None

    # -- data -> a checked task ---------------------------------------------------------------------------

    @classmethod
    def claims(cls, source: DataSource) -> bool: ...

    @classmethod
    def read(cls, data: Any, val: Any, options: DataOptions, *, model: str | None = None,
             keep_classes: bool = False) -> Task:
        """The checked task (every check that can fail on bad input, before any write). ``model``: the
        backbone, or a saved run of this kind to continue from; ``keep_classes``: that run is being updated,
        its classes stay in their order and the data's new ones are added after them."""
        ...

    # -- the task ---------------------------------------------------------------------------------------------

    @property
    def kind(self) -> str: ...  # what a run records: "text-classification", "tabular-regression", ...

    @property
    def backbone(self) -> str: ...

    @property
    def classes(self) -> list[str]: ...

    @property
    def objective(self) -> Any: ...

    @property
    def family(self) -> Family: ...

    @property
    def starts_pretrained(self) -> bool: ...

    @property
    def val_labels(self) -> list[str]: ...

    def pool_labels(self) -> list[Any]: ...

    def folds(self, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Cross-validation's k splits of the pooled examples (training rows, validation rows); empty where a
        fold would be empty."""
        ...

    def fold(self, train_rows: np.ndarray, val_rows: np.ndarray | None = None) -> Task: ...

    def prepare(self, recipe: Recipe, device: torch.device, precision: str, *,
                cache_features: bool = True) -> Prepared: ...

    def default_recipe(self, base: Recipe) -> Recipe: ...

    def facts(self) -> DataFacts: ...

    def cache_in(self, folder: Path) -> None: ...

    def baseline(self) -> dict[str, float]: ...

    def chance_loss(self) -> float | None: ...

    def final_scores(self, network: Any, preprocessor: Any, device: torch.device, precision: str,
                     trained: dict[str, Any]) -> dict[str, Any]: ...

    # -- a saved run of this kind, on new data ----------------------------------------------------------------

    @classmethod
    def read_like(cls, run: Any, data: Any, options: DataOptions, *, labelled: bool) -> Any: ...

    @classmethod
    def truth(cls, run: Any, examples: Any) -> np.ndarray:
        """Class ids of the examples' labels, or a regressor's targets in their units."""
        ...

    @classmethod
    def predict(cls, run: Any, examples: Any, precision: str = "auto") -> Predictions: ...

    @classmethod
    def choose_precision(cls, run: Any, examples: Any) -> tuple[str, str] | None:
        """What "auto" predicts ``examples`` in, and why, where the kind measures it (None: "auto" as is)."""
        ...

    @classmethod
    def output_columns(cls, data: Any, examples: Any) -> dict[str, list]:
        """The columns a predictions file repeats before the predictions."""
        ...

    @classmethod
    def embed(cls, run: Any, examples: Any) -> np.ndarray:
        """The run's representation of each example just before its head (what a drift check compares)."""
        ...


TASKS: dict[str, type[Task]] = {}
# What every kind's training reads: the optimizer, the schedule, stopping, the metric, precision and seeds.
COMMON_KNOBS = frozenset({"learning_rate", "epochs", "batch_size", "weight_decay", "dropout", "label_smoothing",
                          "warmup_ratio", "schedule", "grad_clip", "augment", "patience", "metric", "precision",
                          "seed", "init_seed"})


def register(task: type[Task]) -> type[Task]:
    """Make ``task`` the kind of data its ``modality`` names (a class decorator)."""
    TASKS[task.modality] = task
    return task


def modalities() -> tuple[str, ...]:
    """What ``--task`` accepts: "auto" and every registered kind."""
    return ("auto", *TASKS)


def task_class(modality: str) -> type[Task]:
    if modality not in TASKS:
        raise ConfigError([f"The 'task' parameter must be one of {', '.join(modalities())}. "
                           f"Got {modality!r} instead."])
    return TASKS[modality]


def task_saved_with(adapter: str) -> type[Task]:
    """The kind of data whose runs a model adapter saves (an ensemble's: its members')."""
    for task in TASKS.values():
        if task.adapter_name == adapter:
            return task
    raise KeyError(f"No kind of data saves its runs with the '{adapter}' adapter.")


def check_knobs(task: type[Task], recipe: Recipe) -> None:
    """A ConfigError naming every knob ``recipe`` sets (away from its default) that ``task``'s kind of data does
    not read (LoRA on a table, say): a setting that would be ignored is refused instead."""
    from tuneloop.config import Recipe

    default = Recipe()
    problems = []
    for name in sorted(set(recipe.to_dict()) - task.knobs):
        if getattr(recipe, name) != getattr(default, name):
            readers = sorted(t.modality for t in TASKS.values() if name in t.knobs)
            readers = ", ".join(readers[:-1]) + " and " + readers[-1] if len(readers) > 1 else "".join(readers)
            problems.append(f"The '{name}' parameter does not apply to {task.modality} data ({task.default_model}); "
                            f"{'it applies to ' + readers if readers else 'nothing reads it'}. "
                            f"Got {getattr(recipe, name)!r}; leave it out.")
    if problems:
        raise ConfigError(problems)


def modality_of(data: Any, requested: str = "auto", text_col: str | None = None,
                image_col: str | None = None, time_col: str | None = None) -> str:
    """The kind of data ``data`` is, as requested, else the first registered kind that claims it (in their
    ``claim_order``): "image" for a folder (of class folders of images) or a table whose path column
    (``image_col``, or a common name) names image files, "text" when the data has a text column (named by
    ``text_col``, a name with a common one as a word, such as 'text' or 'review_text', or a column of
    sentences), "series" when it has a time column (``time_col``, or a common name) and numbers, else
    "tabular"."""
    if requested != "auto":
        return task_class(requested).modality
    source = DataSource(data, DataOptions(text_col=text_col, image_col=image_col, time_col=time_col))
    for task in sorted(TASKS.values(), key=lambda t: t.claim_order):
        if task.claims(source):
            return task.modality
    raise ConfigError([f"{data!r}: no kind of data ({', '.join(TASKS)}) can read this; name a file or folder."])


def holds_prose(values: list[Any]) -> bool:
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


from tuneloop.tasks import image, instructions, series, table, text  # noqa: E402,F401  (each registers itself)
