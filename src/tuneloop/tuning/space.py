"""The search spaces of the sampler strategies (each task's family names its own), and how sampled parameters
become a Recipe.

The learning rate is searched as a multiple of a base rate that depends on how much of the network
trains: a fresh head alone wants rates around 1e-3, a full fine-tune of a pretrained encoder around 5e-5.
Searching the multiple keeps one range sensible at every depth, for grid, random and TPE alike.
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from tuneloop.config import KNOBS, Recipe
from tuneloop.tuning.family import Family

DEPTHS = (0, 2, 4, "all")


def text_learning_rate(trainable_layers: int | str, lora_rank: int = 0) -> float:
    """A pretrained encoder's: a fresh head alone, adapters (they start at zero), the top layers, all of them."""
    if trainable_layers == 0:
        return 2e-3
    if lora_rank > 0:  # low-rank adapters start at zero and want rates near a head's
        return 5e-4
    return 5e-5 if trainable_layers == "all" else 1e-4


def image_learning_rate(trainable_layers: int | str, lora_rank: int = 0) -> float:
    """A pretrained convolutional body's: with BatchNorm it takes more than a transformer."""
    if trainable_layers == 0:
        return 2e-3
    return 1e-4 if trainable_layers == "all" else 2e-4


def scratch_learning_rate(trainable_layers: int | str, lora_rank: int = 0) -> float:
    """A network from random weights (an MLP, a small CNN): every layer trains at one rate."""
    return 1e-3


TEXT_SPACE: dict[str, BaseDistribution] = {
    "trainable_layers": CategoricalDistribution(DEPTHS),
    "lora_rank": CategoricalDistribution((0, 4, 16)),  # ignored (0) where the head alone trains
    "lr_multiplier": FloatDistribution(0.1, 10.0, log=True),
    "weight_decay": FloatDistribution(0.0, 0.1),
    "dropout": FloatDistribution(0.0, 0.3),
    "label_smoothing": FloatDistribution(0.0, 0.2),
    "warmup_ratio": FloatDistribution(0.0, 0.2),
    "epochs": IntDistribution(2, 6),
    "batch_size": CategoricalDistribution((8, 16, 32)),
}

TEXT_GRID: dict[str, list[Any]] = {
    "trainable_layers": [0, 2, "all"],
    "lr_multiplier": [0.3, 1.0, 3.0],
}

# Tables: the MLP's width and depth are the capacity; no encoder knobs.
TABLE_SPACE: dict[str, BaseDistribution] = {
    "hidden_layers": IntDistribution(1, 4),
    "hidden_units": CategoricalDistribution((32, 64, 128, 256, 512)),
    "lr_multiplier": FloatDistribution(0.1, 10.0, log=True),
    "weight_decay": FloatDistribution(0.0, 0.1),
    "dropout": FloatDistribution(0.0, 0.5),
    "augment": FloatDistribution(0.0, 0.5),
    "epochs": IntDistribution(10, 60),
    "batch_size": CategoricalDistribution((16, 32, 64)),
}

TABLE_GRID: dict[str, list[Any]] = {
    "hidden_layers": [1, 2, 3],
    "lr_multiplier": [0.3, 1.0, 3.0],
}


# Images on a pretrained body: depth as for texts, no LoRA; augmentation and mixing of the images.
IMAGE_SPACE: dict[str, BaseDistribution] = {
    "trainable_layers": CategoricalDistribution(DEPTHS),
    "lr_multiplier": FloatDistribution(0.1, 10.0, log=True),
    "weight_decay": FloatDistribution(0.0, 0.1),
    "dropout": FloatDistribution(0.0, 0.5),
    "augment": FloatDistribution(0.0, 0.6),
    "mixup": FloatDistribution(0.0, 0.5),
    "epochs": IntDistribution(3, 15),
    "batch_size": CategoricalDistribution((16, 32, 64)),
}

IMAGE_GRID: dict[str, list[Any]] = {
    "trainable_layers": [0, 2, "all"],
    "lr_multiplier": [0.3, 1.0, 3.0],
}

# The small CNN from scratch: its stages and channels are the capacity.
CNN_SPACE: dict[str, BaseDistribution] = {
    "hidden_layers": IntDistribution(1, 4),
    "hidden_units": CategoricalDistribution((32, 64, 128, 256)),
    "lr_multiplier": FloatDistribution(0.1, 10.0, log=True),
    "weight_decay": FloatDistribution(0.0, 0.1),
    "dropout": FloatDistribution(0.0, 0.5),
    "augment": FloatDistribution(0.0, 0.6),
    "mixup": FloatDistribution(0.0, 0.5),
    "epochs": IntDistribution(5, 30),
    "batch_size": CategoricalDistribution((32, 64, 128)),
}

CNN_GRID: dict[str, list[Any]] = {
    "hidden_layers": [1, 2, 3],
    "lr_multiplier": [0.3, 1.0, 3.0],
}


def recipe_from_params(base: Recipe, params: dict[str, Any], family: Family) -> Recipe:
    """``base`` with the sampled knobs set; knobs not sampled keep the base's values."""
    values = {k: v for k, v in params.items() if k != "lr_multiplier"}
    depth = values.get("trainable_layers", base.trainable_layers)
    if depth == 0 and family.adapters:
        values["lora_rank"] = 0  # LoRA adapts encoder layers; a head-only trial has none
    rank = values.get("lora_rank", base.lora_rank)
    for name, value in values.items():  # a sampled float knob to 4 decimals, an integer one as it is
        if isinstance(value, float) and not KNOBS[name].integer:
            values[name] = round(value, 4)
    if "lr_multiplier" in params:
        rate = family.base_learning_rate(depth, rank) * params["lr_multiplier"]
        values["learning_rate"] = float(f"{rate:.4g}")
    return base.replace(**values)


def params_of(recipe: Recipe, family: Family) -> dict[str, Any]:
    """The recipe as sampler parameters (used to re-queue an interrupted trial's parameters)."""
    params = {name: getattr(recipe, name) for name in family.space if name != "lr_multiplier"}
    base_rate = family.base_learning_rate(recipe.trainable_layers, recipe.lora_rank)
    params["lr_multiplier"] = float(f"{recipe.learning_rate / base_rate:.4g}")
    return params
