"""The optimizer and the learning-rate schedule: linear warmup, then linear, cosine or constant."""

from __future__ import annotations

import math

import torch
from torch import nn

from tuneloop.config import Recipe


def make_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.AdamW:
    """Fused AdamW over the trainable parameters; biases and norm weights get no weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # Fused AdamW updates all parameters in one kernel per step instead of a loop of small ops.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=recipe.learning_rate, fused=fused)


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
