"""Which precision trains a network faster on this device, measured rather than assumed.

Where a device computes bf16 natively, bf16 is usually the faster way to train, but not always: MiniLM on an
H200 trained 5-25% slower under bf16 autocast than in fp32 (small matrices, where the casts cost more than
the faster products save), and EfficientNet's depthwise convolutions are slower in bf16 on CPUs and GPUs
alike. So "auto" times a few training steps of the run's own network on one of its own batches in each
precision and takes bf16 only where it is at least ``MARGIN`` faster. The answer is kept per machine (device
name, torch version, network, batch size) in a small JSON file under the user's cache folder
(``$XDG_CACHE_HOME/tuneloop`` or ``~/.cache/tuneloop``), so each network is measured once per machine.
Where bf16 is not native (an AVX2-only CPU emulates it many times slower) nothing is measured: fp32.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tuneloop.store.atomic import write_text_atomic

PROBE_STEPS = 3  # timed steps per precision, after one untimed warm-up step
MARGIN = 0.05  # bf16 must save at least this share of a step's time: a close call stays in fp32
PRECISIONS = ("fp32", "bf16")


def faster_precision(seconds: dict[str, float], margin: float = MARGIN) -> str:
    """bf16 where its step took at least ``margin`` less time than fp32's, else fp32."""
    return "bf16" if seconds["bf16"] < (1 - margin) * seconds["fp32"] else "fp32"


def probe_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tuneloop" / "precision-probe.json"


@functools.cache
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()}, {torch.get_num_threads()} threads"


def probe_key(device: torch.device, network: str, batch_size: int) -> str:
    return f"{device_name(device)} | torch {torch.__version__} | {network} | batch {batch_size}"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[str], None], device: torch.device, precision: str,
               steps: int = PROBE_STEPS) -> float:
    """Seconds per call of ``step(precision)``, after one untimed call (kernel selection, allocation)."""
    step(precision)
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step(precision)
    _synchronize(device)
    return (time.perf_counter() - started) / steps


def measured_precision(key: str, device: torch.device, make_step: Callable[[], Callable[[str], None]],
                       path: Path | None = None) -> tuple[str, dict[str, float]]:
    """The faster precision for ``key`` (from the machine's record, else measured and recorded) and the seconds
    per step it was chosen by. ``make_step()`` is called only to measure: it builds what ``step(precision)``,
    one training step, needs."""
    path = path or probe_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]["precision"], known[key]["seconds"]
    step = make_step()
    seconds = {precision: time_steps(step, device, precision) for precision in PRECISIONS}
    chosen = faster_precision(seconds)
    try:
        known = json.loads(path.read_text())  # another process may have added a key meanwhile
    except (OSError, ValueError):
        known = {}
    known[key] = {"precision": chosen, "seconds": seconds}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(known, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home: measured again next time, nothing lost
    return chosen, seconds


_chosen: dict[str, str] = {}  # probe key -> precision, for this process

def probe_training_precision(task, recipe, device: torch.device, network: str, path: Path | None = None) -> str:
    """The faster precision for training ``task``'s whole network (described by ``network``) at ``recipe``'s
    batch size on ``device``: one of its own batches (the longest), forward, loss, backward and an optimizer
    step in each precision, on a network built for the probe alone; recorded per machine
    (``measured_precision``) and in memory."""
    key = probe_key(device, network, recipe.batch_size)
    if key not in _chosen:
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the run's own draws are not moved by the probe
            torch.manual_seed(0)
            _chosen[key] = measured_precision(key, device, lambda: _training_step(task, recipe, device), path)[0]
    return _chosen[key]


def _training_step(task, recipe, device: torch.device) -> Callable[[str], None]:
    import numpy as np

    from tuneloop.data.batches import training_order
    from tuneloop.training.fast_dropout import cpu_fast_dropout
    from tuneloop.training.loop import train_step
    from tuneloop.training.schedule import make_optimizer

    whole = recipe.replace(trainable_layers="all", contrastive=0, augment=0, mixup=0)
    prepared = task.prepare(whole, device, "fp32", cache_features=False)
    model = prepared.trainable.to(device).train()
    indices = training_order(prepared.train_set.lengths, recipe.batch_size, np.random.default_rng(0))[0]
    batch = prepared.train_set.batch(indices).to(device)
    optimizer = make_optimizer(model, whole, device)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step(precision: str) -> None:  # as the training loop runs it (on a CPU, with its cheap dropout masks)
        with cpu_fast_dropout(model) if device.type == "cpu" else contextlib.nullcontext():
            train_step(model, batch, optimizer, whole, device, precision, trainable, objective=task.objective)

    return step
