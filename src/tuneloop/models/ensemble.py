"""An ensemble: trained models of one kind that predict together, saved as one model folder.

Where validation is too small to tell two recipes apart (a head on the frozen encoder and a whole fine-tune,
each scored on a dozen examples), handing back one of them is a coin toss between models that fail on
different examples. The average of their class probabilities (of their values, for a regressor) is rarely
worse than the better of them and often better than both (Dietterich 2000; Lakshminarayanan et al. 2017).

The folder holds each member's own model folder (``member-0``, ``member-1``, ...; hard links to the members'
files where the file system allows, so nothing is stored twice) and a ``tuneloop-model.json`` naming the
adapter that loads the members. Everything an ensemble is asked apart from its predictions (the text vector
drift compares, the encoder's size) is its lead member's, the first: the one the study ranked best.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from tuneloop.models import get_adapter, register_adapter

ADAPTER_FILE = "tuneloop-model.json"
MEMBER_PREFIX = "member-"
AVERAGES = ("probabilities", "values")


class Ensemble(nn.Module):
    """Members fed the same inputs; the output is the log of their mean class probabilities (so that a softmax
    of it is that mean) or, for a regressor, the mean of their outputs."""

    def __init__(self, members: Sequence[nn.Module], average: str = "probabilities"):
        super().__init__()
        if not members:
            raise ValueError("An ensemble needs at least one member.")
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {', '.join(AVERAGES)}, not {average!r}.")
        self.members = nn.ModuleList(members)
        self.average = average

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        outputs = [member(**inputs).float() for member in self.members]
        if self.average == "values":
            return torch.stack(outputs).mean(0)
        probabilities = torch.stack([torch.softmax(output, dim=-1) for output in outputs]).mean(0)
        return torch.log(probabilities.clamp_min(1e-12))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "members":
                raise
            return getattr(self.members[0], name)  # the lead member's: its text vector, its encoder


def is_ensemble(folder: str | os.PathLike) -> bool:
    path = Path(folder) / ADAPTER_FILE
    return path.exists() and json.loads(path.read_text()).get("adapter") == EnsembleAdapter.name


def member_adapter(folder: str | os.PathLike) -> str:
    """The adapter that loads a model folder's networks: its own, or an ensemble's members'."""
    info = json.loads((Path(folder) / ADAPTER_FILE).read_text())
    return info.get("member_adapter", info["adapter"])


def lead_member(folder: str | os.PathLike) -> Path:
    """The folder a later fine-tune starts from: an ensemble's lead member, or the folder itself."""
    return Path(folder) / f"{MEMBER_PREFIX}0" if is_ensemble(folder) else Path(folder)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def write_ensemble(folder: Path, member_folders: Sequence[Path], average: str) -> None:
    """Fill ``folder`` (new, empty or missing) with the members' model folders and the file that names them;
    the members are of one adapter, the lead first."""
    adapters = {member_adapter(member) for member in member_folders}
    if len(adapters) != 1:
        raise ValueError(f"An ensemble's members must be models of one kind, not {', '.join(sorted(adapters))}.")
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {', '.join(AVERAGES)}, not {average!r}.")
    folder.mkdir(parents=True, exist_ok=True)
    for i, member in enumerate(member_folders):
        shutil.copytree(member, folder / f"{MEMBER_PREFIX}{i}", copy_function=_link_or_copy)
    info = {"adapter": EnsembleAdapter.name, "member_adapter": adapters.pop(), "members": len(member_folders),
            "average": average}
    (folder / ADAPTER_FILE).write_text(json.dumps(info, indent=2))


class EnsembleAdapter:
    """Loads an ensemble folder: each member with its own adapter, the lead member's preprocessor (members of
    one study are trained on the same examples, so their tokenizers and table preprocessing agree)."""

    name = "ensemble"

    def save(self, model: torch.nn.Module, preprocessor: object, directory: str) -> None:
        raise NotImplementedError("An ensemble is written from its members' saved folders: use write_ensemble.")

    def load(self, directory: str) -> tuple[Ensemble, object]:
        info = json.loads((Path(directory) / ADAPTER_FILE).read_text())
        adapter = get_adapter(info["member_adapter"])
        loaded = [adapter.load(str(Path(directory) / f"{MEMBER_PREFIX}{i}")) for i in range(info["members"])]
        model = Ensemble([network for network, _ in loaded], info["average"])
        model.eval()
        return model, loaded[0][1]


register_adapter(EnsembleAdapter())
