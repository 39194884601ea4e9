"""Forecasters: networks that read a window's context (standardized by its own mean and spread, see
``training.objective.Forecast``) and forecast its next ``horizon`` points, in the same units.

- ``dlinear``: the series split into a moving-average trend and the rest, one linear map from the context to
  the forecast for each (DLinear, Zeng et al. 2023, "Are Transformers Effective for Time Series
  Forecasting?"): few weights, hard to beat on short series.
- ``nbeats``: a stack of MLP blocks, each forecasting a part and handing the rest of the context on (N-BEATS'
  generic blocks, Oreshkin et al. 2020); ``hidden_layers`` per block, ``hidden_units`` wide.
- ``patchtst``: the context cut into overlapping patches, each a token of a transformer encoder, the tokens
  flattened into the forecast (PatchTST, Nie et al. 2023); ``hidden_layers`` encoder layers of
  ``hidden_units`` (at most PATCH_WIDTH_MAX) wide.

Every forecaster has ``embed`` (the window's representation before its last layer: what a drift check
compares) and is saved as safetensors with its shape and the series' reading options as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tuneloop.data.series import Step
from tuneloop.errors import ModelError
from tuneloop.models import register_adapter

WEIGHTS = "model.safetensors"
ADAPTER_FILE = "tuneloop-model.json"
NBEATS_BLOCKS = 3
TREND_KERNEL = 25  # points averaged into DLinear's trend (fewer on a shorter context)
PATCH_WIDTH_MAX = 128
PATCH_HEADS = 4


class DLinear(nn.Module):
    def __init__(self, context: int, horizon: int, **_: Any):
        super().__init__()
        self.kernel = min(TREND_KERNEL, context if context % 2 else context - 1)
        self.trend = nn.Linear(context, horizon)
        self.rest = nn.Linear(context, horizon)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        trend = self._trend(context)
        return self.trend(trend) + self.rest(context - trend)

    def _trend(self, context: torch.Tensor) -> torch.Tensor:
        """The moving average, the ends repeated so that it is as long as the context."""
        side = (self.kernel - 1) // 2
        padded = torch.cat([context[:, :1].expand(-1, side), context, context[:, -1:].expand(-1, side)], dim=1)
        return padded.unfold(1, self.kernel, 1).mean(-1)

    def embed(self, context: torch.Tensor) -> torch.Tensor:
        """A linear model's representation is its input."""
        return context


class NBeats(nn.Module):
    def __init__(self, context: int, horizon: int, hidden_units: int, hidden_layers: int, dropout: float,
                 **_: Any):
        super().__init__()
        self.blocks = nn.ModuleList(_Block(context, horizon, hidden_units, max(1, hidden_layers), dropout)
                                    for _ in range(NBEATS_BLOCKS))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        forecast = 0
        for block in self.blocks:
            hidden = block.body(context)
            context = context - block.backcast(hidden)
            forecast = forecast + block.forecast(hidden)
        return forecast

    def embed(self, context: torch.Tensor) -> torch.Tensor:
        return self.blocks[0].body(context)


class _Block(nn.Module):
    def __init__(self, context: int, horizon: int, width: int, depth: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        size = context
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU(), nn.Dropout(dropout)]
            size = width
        self.body = nn.Sequential(*layers)
        self.backcast = nn.Linear(width, context)
        self.forecast = nn.Linear(width, horizon)


class PatchTST(nn.Module):
    def __init__(self, context: int, horizon: int, hidden_units: int, hidden_layers: int, dropout: float,
                 **_: Any):
        super().__init__()
        self.patch = patch_length(context)
        self.stride = max(1, self.patch // 2)
        patches = (context + self.stride - self.patch) // self.stride + 1
        width = max(PATCH_HEADS, min(PATCH_WIDTH_MAX, hidden_units) // PATCH_HEADS * PATCH_HEADS)
        self.embedding = nn.Linear(self.patch, width)
        self.position = nn.Parameter(torch.zeros(1, patches, width))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(width, PATCH_HEADS, 2 * width, dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, max(1, hidden_layers), enable_nested_tensor=False)
        self.head = nn.Linear(patches * width, horizon)

    def _tokens(self, context: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([context, context[:, -1:].expand(-1, self.stride)], dim=1)
        return self.encoder(self.embedding(padded.unfold(1, self.patch, self.stride)) + self.position)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.head(self._tokens(context).flatten(1))

    def embed(self, context: torch.Tensor) -> torch.Tensor:
        return self._tokens(context).mean(1)


def patch_length(context: int) -> int:
    """Points per patch: 16 as in PatchTST where the context holds 4 of them, fewer on shorter contexts."""
    return max(2, min(16, context // 4))


NETWORKS = {"dlinear": DLinear, "nbeats": NBeats, "patchtst": PatchTST}


@dataclass(frozen=True)
class SeriesPreprocessing:
    """How a forecaster's series are read and windowed: the columns, the frequency and season, the points it
    forecasts and the points it reads."""

    time_col: str
    series_col: str | None
    value_cols: tuple[str, ...]
    step: Step
    season: int
    horizon: int
    context: int

    def to_dict(self) -> dict[str, Any]:
        return {"time_col": self.time_col, "series_col": self.series_col, "value_cols": list(self.value_cols),
                "step": self.step.to_dict(), "season": self.season, "horizon": self.horizon,
                "context": self.context}

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> SeriesPreprocessing:
        return cls(stored["time_col"], stored["series_col"], tuple(stored["value_cols"]),
                   Step.from_dict(stored["step"]), int(stored["season"]), int(stored["horizon"]),
                   int(stored["context"]))


class Forecaster(nn.Module):
    """A forecasting network with its shape (what rebuilds it) and whether it started from a saved one."""

    def __init__(self, kind: str, context: int, horizon: int, hidden_units: int, hidden_layers: int,
                 dropout: float):
        super().__init__()
        self.net = NETWORKS[kind](context=context, horizon=horizon, hidden_units=hidden_units,
                                  hidden_layers=hidden_layers, dropout=dropout)
        self.shape = {"forecaster": kind, "context": context, "horizon": horizon, "hidden_units": hidden_units,
                      "hidden_layers": hidden_layers}
        self.pretrained = False

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.net(context)

    def embed(self, context: torch.Tensor) -> torch.Tensor:
        return self.net.embed(context)

    def pretrained_parameter_names(self) -> list[str]:
        """Every weight of a forecaster started from a saved one (L2-SP pulls toward them); none for a new one."""
        return [name for name, _ in self.named_parameters()] if self.pretrained else []


class SeriesNetAdapter:
    name = "series_net"

    def build(self, preprocessing: SeriesPreprocessing, recipe: Any) -> Forecaster:
        return Forecaster(recipe.forecaster, preprocessing.context, preprocessing.horizon, recipe.hidden_units,
                          recipe.hidden_layers, recipe.dropout)

    def save(self, model: Forecaster, preprocessing: SeriesPreprocessing, directory: str) -> None:
        out = Path(directory)
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(out / WEIGHTS))
        info = {"adapter": self.name, **model.shape, "preprocessing": preprocessing.to_dict()}
        (out / ADAPTER_FILE).write_text(json.dumps(info, indent=2))

    def load(self, directory: str) -> tuple[Forecaster, SeriesPreprocessing]:
        path = Path(directory)
        try:
            info = json.loads((path / ADAPTER_FILE).read_text())
            model = Forecaster(info["forecaster"], info["context"], info["horizon"], info["hidden_units"],
                               info["hidden_layers"], 0.0)
            preprocessing = SeriesPreprocessing.from_dict(info["preprocessing"])
            model.load_state_dict(load_file(str(path / WEIGHTS)))
        except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as error:
            raise ModelError(f"{path}: not a readable forecaster ({error}).") from error
        model.eval()
        return model, preprocessing

    def load_start(self, directory: str, recipe: Any) -> Forecaster:
        """A saved forecaster as the start of a fine-tune: its weights, the recipe's dropout, all of it counted
        as pretrained."""
        model, _ = self.load(directory)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = recipe.dropout
        model.pretrained = True
        return model.train()


register_adapter(SeriesNetAdapter())
