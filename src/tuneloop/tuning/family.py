"""A family of networks as the search sees it: which moves its rule table makes for each diagnosis, the larger
moves it explores, the samplers' space and grid, the base learning rate the samplers' multiplier scales, and
the guided search's first recipe. Each task declares the families it trains (``tasks.text``: a pretrained
encoder; ``tasks.table``: an MLP from scratch; ``tasks.image``: a pretrained body, or a small CNN from
scratch), and the policy, the strategies and the search spaces read only this: a new kind of data brings its
own family, and no module of the search changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna.distributions import BaseDistribution

from tuneloop.config import Recipe

if TYPE_CHECKING:
    from tuneloop.tuning.policy import Move


@dataclass(frozen=True)
class Family:
    """``rules``: a diagnosis's label -> the moves to try, in order (``policy.next_recipe``); ``explore``: the
    larger moves tried once the search stops gaining (``policy.explore``); ``space`` and ``grid``: the
    samplers' (an ``lr_multiplier`` scales ``base_learning_rate(trainable_layers, lora_rank)``);
    ``first_recipe(base, learning_rate, train_size)`` and ``first_reason``: the guided search's first trial,
    the cheapest capacity; ``adapters``: whether LoRA applies (a trial training the head alone has none)."""

    name: str
    rules: Mapping[str, tuple[Move, ...]]
    explore: tuple[Move, ...]
    space: Mapping[str, BaseDistribution]
    grid: Mapping[str, Sequence[Any]]
    base_learning_rate: Callable[[int | str, int], float]
    first_recipe: Callable[[Recipe, float, int | None], Recipe]
    first_reason: str
    adapters: bool = False

    def __str__(self) -> str:
        return self.name


def first_head(base: Recipe, learning_rate: float, train_size: int | None) -> Recipe:
    """The head alone on a frozen pretrained encoder or image body, at a head's learning rate, for at least
    MIN_HEAD_STEPS optimizer steps (a head on cached vectors takes microseconds a step)."""
    from tuneloop.tuning.policy import MAX_HEAD_EPOCHS, MIN_HEAD_STEPS, epochs_for_steps

    head = base.replace(trainable_layers=0, learning_rate=learning_rate, epochs=max(base.epochs, 5))
    return head.replace(epochs=epochs_for_steps(head, train_size, MIN_HEAD_STEPS, MAX_HEAD_EPOCHS))


def small_network(hidden_layers: int, hidden_units: int = 64) -> Callable[[Recipe, float, int | None], Recipe]:
    """A network from random weights at its smallest (``hidden_layers`` layers or stages of up to
    ``hidden_units``), trained for many cheap epochs stopped by validation."""

    def first(base: Recipe, learning_rate: float, train_size: int | None) -> Recipe:
        return base.replace(hidden_layers=hidden_layers, hidden_units=hidden_units, learning_rate=learning_rate,
                            epochs=max(base.epochs, 30), patience=max(base.patience, 5))

    return first
