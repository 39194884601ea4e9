"""Model adapters: each module registers the adapter it defines under a name.

An adapter builds a fresh model from a backbone, encodes inputs, saves a trained model to a directory
and loads it back. ``hf_text`` is the text classifier on a Hugging Face encoder.
"""

from __future__ import annotations

from typing import Protocol

import torch

from tuneloop.config import Recipe
from tuneloop.data.batches import Encoded


class ModelAdapter(Protocol):
    name: str

    def check_backbone(self, backbone: str) -> None:
        """Raise ModelError if ``backbone`` cannot be loaded; called before anything is written."""
        ...

    def build(self, backbone: str, num_labels: int, recipe: Recipe) -> tuple[torch.nn.Module, object]:
        """A model with a fresh head on ``backbone`` and the preprocessor (tokenizer) that feeds it."""
        ...

    def encode(self, preprocessor: object, inputs: list, labels: list[int] | None, recipe: Recipe) -> Encoded: ...

    def save(self, model: torch.nn.Module, preprocessor: object, directory: str) -> None: ...

    def load(self, directory: str) -> tuple[torch.nn.Module, object]: ...


ADAPTERS: dict[str, ModelAdapter] = {}


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    ADAPTERS[adapter.name] = adapter
    return adapter


def get_adapter(name: str) -> ModelAdapter:
    if name not in ADAPTERS:
        raise KeyError(f"Unknown model adapter '{name}'. Known adapters: {', '.join(sorted(ADAPTERS))}.")
    return ADAPTERS[name]


from tuneloop.models import hf_text  # noqa: E402,F401  (registers itself)
