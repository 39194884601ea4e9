"""Tabular classification: a multilayer perceptron over the preprocessed row vector.

Depth (``hidden_layers``) and width (``hidden_units``) are the capacity knobs; each hidden layer is a linear
map, GELU and dropout. The fitted preprocessing (column kinds, means, categories) and the classes are saved
next to the weights as JSON, so a saved model predicts raw rows of a new file with the same transform.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tuneloop.config import Recipe
from tuneloop.data.tabular import TabularPreprocessor, TargetEncoder
from tuneloop.errors import ModelError
from tuneloop.models import register_adapter
from tuneloop.models.heads import grow_head

WEIGHTS = "model.safetensors"
ADAPTER_FILE = "tuneloop-model.json"


class TabularMLP(nn.Module):
    def __init__(self, input_width: int, outputs: int, hidden_units: int, hidden_layers: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = input_width
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_units), nn.GELU(), nn.Dropout(dropout)]
            width = hidden_units
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, outputs)
        self.shape = {"input_width": input_width, "outputs": outputs, "hidden_units": hidden_units,
                      "hidden_layers": hidden_layers}
        self.pretrained = False  # True for a saved model, the start of an update (load_start)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(features))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """The row's representation before the head (the last hidden layer's output)."""
        return self.body(features)

    def pretrained_parameter_names(self) -> list[str]:
        """Every weight of a model started from a saved one (L2-SP pulls toward them); none for a fresh one."""
        return [name for name, _ in self.named_parameters()] if self.pretrained else []


@dataclass(frozen=True)
class TablePreprocessing:
    """What turns raw rows into the network's input and its outputs back into classes."""

    features: TabularPreprocessor
    target: TargetEncoder


class TabularMLPAdapter:
    name = "tabular_mlp"

    def build(self, preprocessing: TablePreprocessing, recipe: Recipe) -> TabularMLP:
        return TabularMLP(preprocessing.features.width, preprocessing.target.outputs, recipe.hidden_units,
                          recipe.hidden_layers, recipe.dropout)

    def save(self, model: TabularMLP, preprocessing: TablePreprocessing, directory: str) -> None:
        out = Path(directory)
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(out / WEIGHTS))
        info = {"adapter": self.name, **model.shape, "preprocessor": preprocessing.features.to_dict(),
                "target": preprocessing.target.to_dict()}
        (out / ADAPTER_FILE).write_text(json.dumps(info, indent=2))

    def load(self, directory: str) -> tuple[TabularMLP, TablePreprocessing]:
        path = Path(directory)
        try:
            info = json.loads((path / ADAPTER_FILE).read_text())
            model = TabularMLP(info["input_width"], info["outputs"], info["hidden_units"], info["hidden_layers"], 0.0)
            preprocessing = TablePreprocessing(TabularPreprocessor.from_dict(info["preprocessor"]),
                                               TargetEncoder.from_dict(info["target"]))
        except (OSError, KeyError, ValueError) as error:
            raise ModelError(f"{path}: not a readable tabular model ({error}).") from error
        model.load_state_dict(load_file(str(path / WEIGHTS)))
        model.eval()
        return model, preprocessing

    def load_start(self, directory: str, known: list[str], classes: list[str], recipe: Recipe) -> TabularMLP:
        """A saved MLP as the start of an update: its weights, the head grown from the ``known`` classes to
        ``classes`` (a regressor's head is kept), the recipe's dropout, and all of it counted as pretrained."""
        model, _ = self.load(directory)
        if classes:
            model.head = grow_head(model.head, known, classes)
            model.shape = {**model.shape, "outputs": len(classes)}
        for module in model.body:
            if isinstance(module, nn.Dropout):
                module.p = recipe.dropout
        model.pretrained = True
        return model.train()


register_adapter(TabularMLPAdapter())
