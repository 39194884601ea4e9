"""The optimizer and the learning-rate schedule: linear warmup, then linear, cosine or constant."""

from __future__ import annotations

import math

import torch
from torch import nn

from tuneloop.config import Recipe


def make_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.AdamW:
    """Fused AdamW over the trainable parameters; biases and norm weights get no weight decay.

    With ``recipe.layer_lr_decay`` < 1 and a model that reports each parameter's depth below the top
    (``parameter_depths``), a parameter ``d`` layers down gets ``learning_rate * layer_lr_decay ** d``.
    """
    depths = model.parameter_depths() if recipe.layer_lr_decay < 1 and hasattr(model, "parameter_depths") else {}
    groups: dict[tuple[int, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = not (param.ndim < 2 or "norm" in name.lower())
        groups.setdefault((depths.get(name, 0), decays), []).append(param)
    param_groups = [{"params": params, "weight_decay": recipe.weight_decay if decays else 0.0,
                     "lr": recipe.learning_rate * recipe.layer_lr_decay ** depth}
                    for (depth, decays), params in sorted(groups.items())]
    # Fused AdamW updates all parameters in one kernel per step instead of a loop of small ops.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(param_groups, lr=recipe.learning_rate, fused=fused)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The multiplier of the peak learning rate at ``step`` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1.0 - progress)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, total_steps: int):
    warmup = int(recipe.warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, recipe.schedule))
