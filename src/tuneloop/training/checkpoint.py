"""The last completed epoch of a training run, on disk, so that a killed run continues where it stopped.

One folder per saved epoch, written whole (temporary name, then rename) with the tensors in safetensors
and everything else in JSON: the trainable weights and every buffer (BatchNorm's running statistics move in
training without being parameters), the best epoch's weights, the optimizer's moments, the schedule, the
random generators (NumPy's, torch's on the CPU and on every CUDA device) and the history. Only the newest
folder is kept, so the disk holds one epoch's state per running trial; ``clear`` removes it when the run is
finished.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tuneloop.store.atomic import write_dir_atomic

TENSORS = "state.safetensors"
FIELDS = "state.json"


class EpochCheckpoint:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _epochs(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        done = [p for p in self.folder.glob("epoch-*") if (p / FIELDS).exists() and (p / TENSORS).exists()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def saved(self) -> bool:
        """Whether a finished epoch is saved here to continue from."""
        return bool(self._epochs())

    def save(self, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             rng: np.random.Generator, best_state: dict[str, torch.Tensor] | None, loop: dict[str, Any]) -> None:
        tensors = {f"model.{name}": p.detach().cpu().contiguous()
                   for name, p in model.named_parameters() if p.requires_grad}
        tensors.update({f"buffer.{name}": b.detach().cpu().contiguous() for name, b in model.named_buffers()})
        for name, tensor in (best_state or {}).items():
            tensors[f"best.{name}"] = tensor.cpu().contiguous()
        optimizer_state = optimizer.state_dict()
        for index, values in optimizer_state["state"].items():
            for key, tensor in values.items():
                tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(tensor).cpu().contiguous()
        tensors["torch_rng"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors.update({f"cuda_rng.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
        fields = {"epoch": epoch, "param_groups": optimizer_state["param_groups"],
                  "scheduler": scheduler.state_dict(), "numpy_rng": rng.bit_generator.state,
                  "has_best": best_state is not None, "loop": loop}

        def fill(folder: Path) -> None:
            save_file(tensors, str(folder / TENSORS))
            (folder / FIELDS).write_text(json.dumps(fields))

        target = self.folder / f"epoch-{epoch}"
        if target.exists():
            shutil.rmtree(target)
        write_dir_atomic(target, fill)
        for older in self._epochs():
            if older != target:
                shutil.rmtree(older, ignore_errors=True)

    def load(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             rng: np.random.Generator) -> tuple[int, dict[str, torch.Tensor] | None, dict[str, Any]] | None:
        """Restore the newest saved epoch into the given objects; returns (epoch, best weights, loop state)."""
        if self.folder.is_dir():  # a kill while saving leaves a partial folder: never read, removed here
            for partial in self.folder.glob(".*.partial"):
                shutil.rmtree(partial, ignore_errors=True)
        saved = self._epochs()
        if not saved:
            return None
        folder = saved[-1]
        tensors = load_file(str(folder / TENSORS))
        fields = json.loads((folder / FIELDS).read_text())
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
                              strict=False)
        buffers = dict(model.named_buffers())
        with torch.no_grad():
            for key, tensor in tensors.items():
                if key.startswith("buffer.") and key[len("buffer."):] in buffers:
                    buffers[key[len("buffer."):]].copy_(tensor)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = tensor
        optimizer.load_state_dict({"state": state, "param_groups": fields["param_groups"]})
        # Saved tensors are contiguous; a channels-last convolution's moments must be laid out as its weight
        # is, or the fused update pairs each weight with another element's moments.
        for group in optimizer.param_groups:
            for param in group["params"]:
                for key, value in optimizer.state.get(param, {}).items():
                    if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                        optimizer.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
        scheduler.load_state_dict(fields["scheduler"])
        rng.bit_generator.state = fields["numpy_rng"]
        torch.set_rng_state(tensors["torch_rng"])
        cuda_states = [tensors[f"cuda_rng.{i}"] for i in range(len(tensors)) if f"cuda_rng.{i}" in tensors]
        if cuda_states and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
            torch.cuda.set_rng_state_all(cuda_states)
        best = None
        if fields["has_best"]:
            best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
        return fields["epoch"], best, fields["loop"]

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
