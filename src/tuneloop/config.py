"""The Recipe: every hyperparameter of one training run, validated as a whole before any compute."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from tuneloop.errors import ConfigError

SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
REGRESSION_METRICS = ("mae", "rmse", "r2")
FORECAST_METRICS = ("mase", "smape", *REGRESSION_METRICS)
METRICS = ("auto", *CLASSIFICATION_METRICS, *FORECAST_METRICS, "loss")
LOWER_IS_BETTER = ("loss", "mae", "rmse", "mase", "smape")
# What each objective (``training.objective``) reports, and the metric its "auto" stands for.
OBJECTIVE_METRICS = {"classification": CLASSIFICATION_METRICS, "pairs": CLASSIFICATION_METRICS,
                     "regression": REGRESSION_METRICS, "forecast": FORECAST_METRICS, "language_modelling": ()}
AUTO_METRIC = {"classification": "macro_f1", "pairs": "macro_f1", "regression": "rmse", "forecast": "mase",
               "language_modelling": "loss"}
FORECASTERS = ("dlinear", "nbeats", "patchtst")
INITS = ("pretrained", "scratch")
UNFREEZING = ("none", "gradual")
LORA_TARGETS = ("attention", "all-linear")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _layers(value: Any) -> bool:
    return value == "all" or (_is_int(value) and value >= 0)


@dataclass(frozen=True)
class Knob:
    """One recipe knob, declared once: what the command line's help says, the values it accepts (a range, its
    ends open or closed, integers only; or choices; or a check of its own with the words for it), and a note on
    what its special values mean. Validation, the command line's flags, and the policy's rounding read it; which
    kinds of data a knob applies to, each kind says (``tasks.Task.knobs``)."""

    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    choices: tuple[str, ...] | None = None
    note: str = ""
    shown_high: str | None = None  # the upper end as the message writes it (2**32)
    check: Callable[[Any], bool] | None = None
    words: str | None = None

    def valid(self, value: Any) -> bool:
        if self.check is not None:
            return self.check(value)
        if self.choices is not None:
            return value in self.choices
        if not (_is_int(value) if self.integer else _is_number(value)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    @property
    def expected(self) -> str:
        """What the knob accepts, as an error message says it: "a float in the range (0, 1]", "one of ..."."""
        if self.words is not None:
            return self.words
        if self.choices is not None:
            return f"one of {', '.join(self.choices)}"
        kind = "an int" if self.integer else "a float"
        if self.high is None:
            range_ = f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        else:
            high = self.shown_high or f"{self.high:g}"
            range_ = (f"{kind} in the range {'(' if self.low_open else '['}{self.low:g}, {high}"
                      f"{')' if self.high_open else ']'}")
        return f"{range_} ({self.note})" if self.note else range_


def knob(default: Any, help: str, *, valid: Callable[[Any], bool] | None = None, expected: str | None = None,
         **declared: Any) -> Any:
    """A recipe field with its declaration (``Knob``) in its metadata."""
    return field(default=default, metadata={"knob": Knob(help, check=valid, words=expected, **declared)})


@dataclass(frozen=True)
class Recipe:
    """Hyperparameters of one training run.

    ``trainable_layers`` counts encoder layers from the top that are trained: 0 trains the
    classification head alone, ``"all"`` fine-tunes the whole network (embeddings included).
    ``unfreezing="gradual"`` trains the head alone in the first epoch and unfreezes one more layer each
    epoch after, down to ``trainable_layers`` (ULMFiT's gradual unfreezing).
    ``lora_rank`` > 0 trains low-rank adapters (LoRA) in the trainable layers instead of their weights:
    ``lora_targets`` is "attention" (query, key, value), "all-linear", or comma-separated module names;
    the adapters are merged into the weights when the model is saved.
    Dropout: ``dropout`` on the encoder's hidden states, ``attention_dropout`` on its attention weights,
    ``head_dropout`` on the text vector the head reads.
    ``augment`` is the strength (0 = off, at most 1) of augmentation of the training inputs, drawn afresh
    every epoch (texts: words deleted, swapped, inserted and replaced by neighbours in the backbone's own
    embedding space); validation data is never augmented. It turns off caching of frozen layers.
    Tables: ``hidden_layers`` and ``hidden_units`` are the depth and width of the MLP (its capacity), and
    ``dropout`` is applied after each hidden layer; the encoder knobs do not apply.
    ``mixup`` is the share of training batches (0 to 1) mixed with a shuffled copy of themselves, inputs and
    labels alike (images: mixup or cutmix; table rows: mixup).
    ``init="scratch"`` starts from random weights instead of the pretrained ones (a base to fine-tune later).
    ``metric`` picks the best epoch and trial: "auto" is macro-F1 for a classifier and RMSE for a regressor.
    ``l2sp`` pulls the trained encoder weights back toward their pretrained values (L2-SP, Li et al. 2018),
    protecting what the backbone knew; ``layer_lr_decay`` gives each layer below the top the learning rate
    of the layer above times this factor (discriminative learning rates; 1.0 = one rate for all).
    """

    learning_rate: float = knob(5e-5, "peak learning rate", low=0, high=1, low_open=True)
    epochs: int = knob(3, "maximum number of epochs", low=1, high=1000, integer=True)
    batch_size: int = knob(16, "training batch size", low=1, high=4096, integer=True)
    weight_decay: float = knob(0.01, "AdamW weight decay", low=0, high=1)
    dropout: float = knob(0.1, "dropout on the encoder's hidden states (tables: after each hidden layer)", low=0,
                          high=1, high_open=True)
    attention_dropout: float = knob(0.1, "dropout on the attention weights", low=0, high=1, high_open=True)
    head_dropout: float = knob(0.1, "dropout on the text vector before the head", low=0, high=1, high_open=True)
    label_smoothing: float = knob(0.0, "label smoothing of the loss", low=0, high=1, high_open=True)
    warmup_ratio: float = knob(0.06, "share of steps spent warming up the learning rate", low=0, high=1,
                               high_open=True)
    schedule: str = knob("linear", "learning-rate decay", choices=SCHEDULES)
    trainable_layers: int | str = knob("all", "encoder layers trained from the top: 0 = head only, 'all' = full "
                                       "fine-tune", valid=_layers, expected="'all' or an int >= 0")
    max_length: int = knob(128, "tokens kept per text", low=8, high=8192, integer=True)
    grad_clip: float = knob(1.0, "gradient norm clip (0 = off)", low=0, note="0 turns it off")
    l2sp: float = knob(0.0, "pull of the encoder toward its pretrained weights, L2-SP (0 = off)", low=0, high=100,
                       note="0 turns it off")
    layer_lr_decay: float = knob(1.0, "each lower layer's learning rate is the one above times this (1 = same for "
                                 "all)", low=0, high=1, low_open=True, note="1 gives every layer the same rate")
    unfreezing: str = knob("none", "gradual: head alone in epoch 1, then one more layer each epoch",
                           choices=UNFREEZING)
    lora_rank: int = knob(0, "rank of LoRA adapters trained instead of the layers' weights (0 = off)", low=0,
                          high=1024, integer=True, note="0 turns LoRA off")
    lora_alpha: float = knob(16.0, "LoRA scaling numerator (the update is scaled by alpha / rank)", low=0,
                             low_open=True)
    lora_dropout: float = knob(0.05, "dropout on the LoRA adapters' input", low=0, high=1, high_open=True)
    lora_targets: str = knob("attention", "LoRA modules: attention, all-linear, or comma-separated module names",
                             valid=lambda v: isinstance(v, str) and bool(v.strip()),
                             expected=f"one of {', '.join(LORA_TARGETS)} or comma-separated module names")
    augment: float = knob(0.0, "strength of training-data augmentation, drawn afresh each epoch (0 = off, at most 1)",
                          low=0, high=1, note="0 = off")
    mixup: float = knob(0.0, "share of training batches mixed with each other, inputs and labels (images, tables; "
                        "0 = off)", low=0, high=1, note="the share of batches mixed; 0 = off")
    init: str = knob("pretrained", "pretrained weights, or scratch: random weights (a base to fine-tune later)",
                     choices=INITS)
    hidden_layers: int = knob(2, "tables: hidden layers of the MLP; small-cnn: its stages", low=0, high=16,
                              integer=True, note="0 is a linear model")
    hidden_units: int = knob(256, "tables: units per hidden layer of the MLP; small-cnn: channels of its last stage",
                             low=1, high=8192, integer=True)
    patience: int = knob(2, "epochs without gain before stopping early (0 = off)", low=0, integer=True,
                         note="0 turns early stopping off")
    metric: str = knob("auto", "validation metric for early stopping and the best epoch (auto: macro_f1, rmse "
                       "for regression, mase for forecasts)", choices=METRICS)
    precision: str = knob("auto", "auto uses bf16 where the CPU or GPU computes it natively", choices=PRECISIONS)
    context: int = knob(0, "series: past points each forecast reads (0: four horizons, at least two seasons)",
                        low=0, high=10000, integer=True, note="0 chooses it from the horizon and the season")
    forecaster: str = knob("dlinear", "series: the network, dlinear (linear on trend and remainder), nbeats (an MLP) "
                           "or patchtst (a transformer over patches)", choices=FORECASTERS)
    contrastive: int = knob(0, "texts: tune the encoder on this many pairs per example first (SetFit; 0 = off)",
                            low=0, high=1000, integer=True, note="pairs per training example; 0 turns it off")
    seed: int = knob(42, "random seed", low=0, high=2**32, high_open=True, integer=True, shown_high="2**32")
    init_seed: int = knob(-1, "seed of the head's initial weights (-1: the seed)",
                          valid=lambda v: _is_int(v) and -1 <= v < 2**32,
                          expected="-1 (the same as seed) or an int in the range [0, 2**32)")

    def problems(self) -> list[str]:
        """Every invalid value, each named with its allowed range and the value received."""
        found = [f"The '{name}' parameter must be {declared.expected}. Got {getattr(self, name)!r} instead."
                 for name, declared in KNOBS.items() if not declared.valid(getattr(self, name))]
        frozen = self.trainable_layers == 0
        if frozen and _is_int(self.lora_rank) and self.lora_rank > 0:
            found.append("LoRA (lora_rank > 0) adapts encoder layers, but trainable_layers is 0 (the head alone). "
                         "Set trainable_layers to a number of layers or 'all', or lora_rank to 0.")
        if frozen and self.unfreezing == "gradual":
            found.append("Gradual unfreezing needs layers to unfreeze, but trainable_layers is 0 (the head alone). "
                         "Set trainable_layers to a number of layers or 'all', or unfreezing to 'none'.")
        if _is_int(self.contrastive) and self.contrastive > 0 and self.init == "scratch":
            found.append("Contrastive tuning (contrastive > 0) tunes a pretrained encoder, but init is 'scratch'. "
                         "Set init to 'pretrained', or contrastive to 0.")
        if _is_int(self.contrastive) and self.contrastive > 0 and _is_int(self.lora_rank) and self.lora_rank > 0:
            found.append("Contrastive tuning (contrastive > 0) tunes the encoder's own weights; it does not combine "
                         "with LoRA (lora_rank > 0). Set one of them to 0.")
        return found

    def changed(self) -> dict[str, Any]:
        """The knobs set to something other than their default."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def validate(self) -> Recipe:
        """Return self if every value is valid, else raise one ConfigError listing all problems."""
        found = self.problems()
        if found:
            raise ConfigError(found)
        return self

    def for_objective(self, objective: str) -> Recipe:
        """This recipe with metric "auto" made concrete for the objective ("classification", "regression",
        "forecast"); a ConfigError where the metric does not apply to it (accuracy of a regressor, R² of a
        classifier)."""
        reported = OBJECTIVE_METRICS[objective]
        if self.metric not in ("auto", "loss", *reported):
            raise ConfigError([f"The 'metric' parameter of a {objective} task must be one of "
                               f"{', '.join(('auto', *reported, 'loss'))}. Got {self.metric!r} instead."])
        return self.replace(metric=AUTO_METRIC[objective]) if self.metric == "auto" else self

    @property
    def weights_seed(self) -> int:
        """The seed of the new layers' initial weights."""
        return self.seed if self.init_seed == -1 else self.init_seed

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError([f"Unknown recipe parameter '{name}'. Known parameters: {', '.join(sorted(known))}."
                               for name in unknown])
        return cls(**values).validate()

    @classmethod
    def from_yaml(cls, text: str) -> Recipe:
        return cls.from_dict(yaml.safe_load(text) or {})


KNOBS: dict[str, Knob] = {f.name: f.metadata["knob"] for f in fields(Recipe)}
INTEGER_KNOBS = frozenset(name for name, declared in KNOBS.items() if declared.integer)
