"""Model adapters: each module registers the adapter it defines under a name.

An adapter builds a fresh model, saves a trained model to a directory and loads it back; how it is built
and fed depends on the modality. ``hf_text`` is the text classifier on a Hugging Face encoder, and
``tabular_mlp`` the multilayer perceptron over preprocessed table rows, and ``image_nets`` the image
networks (EfficientNet-Lite0 with ImageNet weights, a small CNN from scratch); ``ensemble`` loads several
models of one kind that predict together.
"""

from __future__ import annotations

from typing import Protocol

import torch


class ModelAdapter(Protocol):
    """What every adapter does; building and feeding a model are modality-specific methods of each."""

    name: str

    def save(self, model: torch.nn.Module, preprocessor: object, directory: str) -> None: ...

    def load(self, directory: str) -> tuple[torch.nn.Module, object]:
        """The saved model in evaluation mode and the preprocessor (tokenizer, table preprocessing) it needs."""
        ...


ADAPTERS: dict[str, ModelAdapter] = {}


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    ADAPTERS[adapter.name] = adapter
    return adapter


def get_adapter(name: str) -> ModelAdapter:
    if name not in ADAPTERS:
        raise KeyError(f"Unknown model adapter '{name}'. Known adapters: {', '.join(sorted(ADAPTERS))}.")
    return ADAPTERS[name]


from tuneloop.models import (  # noqa: E402,F401  (each registers itself)
    causal_lm,
    ensemble,
    hf_text,
    image_nets,
    series_nets,
    tabular_mlp,
)
