"""The Recipe: every hyperparameter of one training run, validated as a whole before any compute."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

import yaml

from tuneloop.errors import ConfigError

SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
REGRESSION_METRICS = ("mae", "rmse", "r2")
METRICS = ("auto", *CLASSIFICATION_METRICS, *REGRESSION_METRICS, "loss")
LOWER_IS_BETTER = ("loss", "mae", "rmse")
INITS = ("pretrained", "scratch")
UNFREEZING = ("none", "gradual")
LORA_TARGETS = ("attention", "all-linear")


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

    learning_rate: float = 5e-5
    epochs: int = 3
    batch_size: int = 16
    weight_decay: float = 0.01
    dropout: float = 0.1
    attention_dropout: float = 0.1
    head_dropout: float = 0.1
    label_smoothing: float = 0.0
    warmup_ratio: float = 0.06
    schedule: str = "linear"
    trainable_layers: int | str = "all"
    max_length: int = 128
    grad_clip: float = 1.0
    l2sp: float = 0.0
    layer_lr_decay: float = 1.0
    unfreezing: str = "none"
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: str = "attention"
    augment: float = 0.0
    mixup: float = 0.0
    init: str = "pretrained"
    hidden_layers: int = 2
    hidden_units: int = 256
    patience: int = 2
    metric: str = "auto"
    precision: str = "auto"
    contrastive: int = 0
    seed: int = 42
    init_seed: int = -1

    def problems(self) -> list[str]:
        """Every invalid value, each named with its allowed range and the value received."""
        found: list[str] = []

        def check(name: str, ok: bool, expected: str) -> None:
            if not ok:
                found.append(f"The '{name}' parameter must be {expected}. Got {getattr(self, name)!r} instead.")

        def is_number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        check("learning_rate", is_number(self.learning_rate) and 0 < self.learning_rate <= 1,
              "a float in the range (0, 1]")
        check("epochs", is_int(self.epochs) and 1 <= self.epochs <= 1000, "an int in the range [1, 1000]")
        check("batch_size", is_int(self.batch_size) and 1 <= self.batch_size <= 4096,
              "an int in the range [1, 4096]")
        check("weight_decay", is_number(self.weight_decay) and 0 <= self.weight_decay <= 1,
              "a float in the range [0, 1]")
        for name in ("dropout", "attention_dropout", "head_dropout", "lora_dropout"):
            check(name, is_number(getattr(self, name)) and 0 <= getattr(self, name) < 1, "a float in the range [0, 1)")
        check("label_smoothing", is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
              "a float in the range [0, 1)")
        check("warmup_ratio", is_number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1,
              "a float in the range [0, 1)")
        check("schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}")
        check("trainable_layers",
              self.trainable_layers == "all" or (is_int(self.trainable_layers) and self.trainable_layers >= 0),
              "'all' or an int >= 0")
        check("max_length", is_int(self.max_length) and 8 <= self.max_length <= 8192,
              "an int in the range [8, 8192]")
        check("grad_clip", is_number(self.grad_clip) and self.grad_clip >= 0, "a float >= 0 (0 turns it off)")
        check("l2sp", is_number(self.l2sp) and 0 <= self.l2sp <= 100, "a float in the range [0, 100] (0 turns it off)")
        check("layer_lr_decay", is_number(self.layer_lr_decay) and 0 < self.layer_lr_decay <= 1,
              "a float in the range (0, 1] (1 gives every layer the same rate)")
        check("unfreezing", self.unfreezing in UNFREEZING, f"one of {', '.join(UNFREEZING)}")
        check("lora_rank", is_int(self.lora_rank) and 0 <= self.lora_rank <= 1024,
              "an int in the range [0, 1024] (0 turns LoRA off)")
        check("augment", is_number(self.augment) and 0 <= self.augment <= 1, "a float in the range [0, 1] (0 = off)")
        check("mixup", is_number(self.mixup) and 0 <= self.mixup <= 1,
              "a float in the range [0, 1] (the share of batches mixed; 0 = off)")
        check("init", self.init in INITS, f"one of {', '.join(INITS)}")
        check("hidden_layers", is_int(self.hidden_layers) and 0 <= self.hidden_layers <= 16,
              "an int in the range [0, 16] (0 is a linear model)")
        check("hidden_units", is_int(self.hidden_units) and 1 <= self.hidden_units <= 8192,
              "an int in the range [1, 8192]")
        check("lora_alpha", is_number(self.lora_alpha) and self.lora_alpha > 0, "a float > 0")
        check("lora_targets", isinstance(self.lora_targets, str) and bool(self.lora_targets.strip()),
              f"one of {', '.join(LORA_TARGETS)} or comma-separated module names")
        frozen = self.trainable_layers == 0
        if frozen and is_int(self.lora_rank) and self.lora_rank > 0:
            found.append("LoRA (lora_rank > 0) adapts encoder layers, but trainable_layers is 0 (the head alone). "
                         "Set trainable_layers to a number of layers or 'all', or lora_rank to 0.")
        if frozen and self.unfreezing == "gradual":
            found.append("Gradual unfreezing needs layers to unfreeze, but trainable_layers is 0 (the head alone). "
                         "Set trainable_layers to a number of layers or 'all', or unfreezing to 'none'.")
        check("patience", is_int(self.patience) and self.patience >= 0, "an int >= 0 (0 turns early stopping off)")
        check("metric", self.metric in METRICS, f"one of {', '.join(METRICS)}")
        check("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}")
        check("contrastive", is_int(self.contrastive) and 0 <= self.contrastive <= 1000,
              "an int in the range [0, 1000] (pairs per training example; 0 turns it off)")
        if is_int(self.contrastive) and self.contrastive > 0 and self.init == "scratch":
            found.append("Contrastive tuning (contrastive > 0) tunes a pretrained encoder, but init is 'scratch'. "
                         "Set init to 'pretrained', or contrastive to 0.")
        if is_int(self.contrastive) and self.contrastive > 0 and is_int(self.lora_rank) and self.lora_rank > 0:
            found.append("Contrastive tuning (contrastive > 0) tunes the encoder's own weights; it does not combine "
                         "with LoRA (lora_rank > 0). Set one of them to 0.")
        check("seed", is_int(self.seed) and 0 <= self.seed < 2**32, "an int in the range [0, 2**32)")
        check("init_seed", is_int(self.init_seed) and -1 <= self.init_seed < 2**32,
              "-1 (the same as seed) or an int in the range [0, 2**32)")
        return found

    def validate(self) -> Recipe:
        """Return self if every value is valid, else raise one ConfigError listing all problems."""
        found = self.problems()
        if found:
            raise ConfigError(found)
        return self

    def for_objective(self, objective: str) -> Recipe:
        """This recipe with metric "auto" made concrete for "classification" or "regression"; a ConfigError
        where the metric does not apply to it (accuracy of a regressor, R² of a classifier)."""
        wrong = REGRESSION_METRICS if objective == "classification" else CLASSIFICATION_METRICS
        if self.metric in wrong:
            allowed = [m for m in METRICS if m not in wrong]
            raise ConfigError([f"The 'metric' parameter of a {objective} task must be one of {', '.join(allowed)}. "
                               f"Got {self.metric!r} instead."])
        if self.metric != "auto":
            return self
        return self.replace(metric="macro_f1" if objective == "classification" else "rmse")

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
