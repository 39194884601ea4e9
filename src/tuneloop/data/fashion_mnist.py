"""Fashion-MNIST, read from the files of the Debian package ``dataset-fashion-mnist``: real images for tests and
benchmarks without a download.

Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; Zalando Research, MIT licence) is 70,000 grayscale 28 x 28
photographs of clothing in ten classes, 60,000 for training and 10,000 for testing, in the idx format of the
original MNIST: a big-endian header (a magic number, the count, and for images the rows and columns) followed
by the raw uint8 values, gzip-compressed.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from tuneloop.errors import ConfigError, DataError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SPLITS = {"train": "train", "test": "t10k"}
IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension


def load_fashion_mnist(split: str = "train", root: str | Path = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """The images (uint8, images x 28 x 28) and label ids (int64, indices into ``CLASSES``) of one split."""
    if split not in SPLITS:
        raise ConfigError([f"The 'split' of Fashion-MNIST must be one of {', '.join(SPLITS)}. Got '{split}' instead."])
    root = Path(root)
    images_path = root / f"{SPLITS[split]}-images-idx3-ubyte.gz"
    labels_path = root / f"{SPLITS[split]}-labels-idx1-ubyte.gz"
    missing = [str(path) for path in (images_path, labels_path) if not path.is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST not found: no file {' or '.join(missing)}. Install the Debian package "
                        "dataset-fashion-mnist (`apt-get install dataset-fashion-mnist`).")
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
                        "expected one label per image.")
    if labels.size and labels.max() >= len(CLASSES):
        raise DataError(f"{labels_path}: expected label ids 0-{len(CLASSES) - 1}; found {int(labels.max())}.")
    return images, labels


def read_idx_images(path: str | Path) -> np.ndarray:
    """The uint8 images (images x rows x columns) of a gzipped idx3 file."""
    path = Path(path)
    data = _read_gzip(path)
    count, rows, columns = _header(path, data, IMAGES_MAGIC, 3)
    return _body(path, data, 16, (count, rows, columns))


def read_idx_labels(path: str | Path) -> np.ndarray:
    """The label ids (int64) of a gzipped idx1 file."""
    path = Path(path)
    data = _read_gzip(path)
    (count,) = _header(path, data, LABELS_MAGIC, 1)
    return _body(path, data, 8, (count,)).astype(np.int64)


def _read_gzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file.") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: expected a gzip-compressed idx file; could not decompress it ({exc}).") from exc


def _header(path: Path, data: bytes, magic: int, dimensions: int) -> tuple[int, ...]:
    size = 4 * (1 + dimensions)
    if len(data) < size:
        raise DataError(f"{path}: expected an idx header of {size} bytes; the file holds {len(data)}.")
    found, *shape = struct.unpack(f">{1 + dimensions}I", data[:size])
    if found != magic:
        raise DataError(f"{path}: expected the idx magic number {magic} (uint8, {dimensions} dimensions); "
                        f"found {found}.")
    return tuple(shape)


def _body(path: Path, data: bytes, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise DataError(f"{path}: the header says {' x '.join(map(str, shape))} values ({expected} bytes); "
                        f"the file holds {len(data) - offset}.")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy()
