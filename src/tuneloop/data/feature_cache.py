"""Outputs of frozen encoder layers, computed once and reused by every epoch and every trial that freezes
the same layers: text vectors for trials that train the head alone, per-token hidden states for trials
that train the top k layers.

With the whole encoder frozen, each epoch would otherwise run the same 22M-parameter forward pass over the
same texts again; caching its output turns a head-only trial into a few matrix products. The cache key is
a fingerprint of everything the vectors depend on: the backbone (its config and weights file), the texts,
the tokenizer length and the precision. Vectors stay in memory within a bound and are also written to the
workspace (safetensors, atomically), so a resumed or later study reuses them; a changed input gives a
different key, so a stale entry is never read. On disk the cache is bounded too (2 GiB, or
$TUNELOOP_CACHE_MB): the least recently used files go first.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load, save

from tuneloop.store.atomic import write_bytes_atomic

MEMORY_LIMIT = 512 * 2**20  # bytes of vectors kept in memory; older entries are dropped (they stay on disk)
DISK_LIMIT_MB = 2048  # the cache folder's bound, least recently used files removed first; TUNELOOP_CACHE_MB


def disk_limit() -> int:
    """The cache folder's bound in bytes: $TUNELOOP_CACHE_MB megabytes, else DISK_LIMIT_MB."""
    value = os.environ.get("TUNELOOP_CACHE_MB", "")
    try:
        megabytes = float(value) if value else DISK_LIMIT_MB
    except ValueError:
        megabytes = DISK_LIMIT_MB
    return int(max(0.0, megabytes) * 2**20)


def trim(folder: Path, limit: int, keep: Path | None = None) -> int:
    """Remove the least recently used cache files of ``folder`` (by modification time: a read touches it)
    until the rest fit in ``limit`` bytes, never ``keep``; returns the bytes freed."""
    if not folder.is_dir():
        return 0
    files = sorted((f for f in folder.glob("*.safetensors") if f.is_file()), key=lambda f: f.stat().st_mtime_ns)
    total = sum(f.stat().st_size for f in files)
    freed = 0
    for file in files:
        if total - freed <= limit:
            break
        if file == keep:
            continue
        size = file.stat().st_size
        file.unlink(missing_ok=True)
        freed += size
    return freed


def backbone_fingerprint(backbone: str) -> str:
    """The backbone folder's config and the size and modification time of its weights (a slim saved model's:
    its own tensors and the pointer to its base, whose hash it holds)."""
    path = Path(backbone)
    digest = hashlib.sha256(str(path.resolve()).encode())
    for name in ("config.json", "model.safetensors", "trained.safetensors", "base-weights.json"):
        file = path / name
        if file.exists():
            stat = os.stat(file)
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def feature_key(backbone: str, texts_fingerprint: str, max_length: int, precision: str,
                what: str = "mean-pooled") -> str:
    """``what``: "mean-pooled" for text vectors, "layer-D" for the token states entering layer D."""
    parts = f"{backbone_fingerprint(backbone)}|{texts_fingerprint}|{max_length}|{precision}|{what}"
    return hashlib.sha256(parts.encode()).hexdigest()[:24]


class FeatureCache:
    def __init__(self, folder: str | Path | None = None, memory_limit: int = MEMORY_LIMIT):
        self.folder = Path(folder) if folder is not None else None
        self.memory_limit = memory_limit
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.computed = 0  # how many times vectors had to be computed
        self.reused = 0  # how many times they came from memory or disk

    def get(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key in self._memory:
            self._memory.move_to_end(key)
            self.reused += 1
            return self._memory[key]
        file = self.folder / f"{key}.safetensors" if self.folder is not None else None
        if file is not None and file.exists():
            vectors = load(file.read_bytes())["vectors"]
            os.utime(file)  # recently used: the last to be trimmed
            self.reused += 1
        else:
            vectors = compute().contiguous()
            self.computed += 1
            if file is not None:
                write_bytes_atomic(file, save({"vectors": vectors}))
                trim(self.folder, disk_limit(), keep=file)
        self._remember(key, vectors)
        return vectors

    def _remember(self, key: str, vectors: torch.Tensor) -> None:
        self._memory[key] = vectors
        while len(self._memory) > 1 and sum(v.nbytes for v in self._memory.values()) > self.memory_limit:
            self._memory.popitem(last=False)
