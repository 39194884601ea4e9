"""Labelled images for classification: read from a folder of class folders or a table of paths, decoded once.

Every image is decoded in full when it is loaded, converted to one channel count and resized to one square
size, so that a file Pillow cannot read (or a truncated one) is reported here, naming the file (and the table
line that refers to it), rather than failing an epoch later. The result is one uint8 tensor: a training
batch is then a slice of it, with no decoding per epoch.

Two layouts are read:

- a folder with one subfolder per class (the class is the folder's name; nested folders inside a class
  belong to it), as torchvision's ``ImageFolder`` reads; unlabelled, every file under the folder;
- a CSV/TSV/Parquet table with a column of image paths (relative paths are relative to the table's folder)
  and, when labelled, a label column.

Hidden files and folders (names starting with '.') and the thumbnails files Windows makes are skipped; any
other file where images are expected must be an image, so that nothing is dropped without a word. Plain
files at the top of a class-folder layout (a README, a licence) are not part of any class and are ignored.

Non-square images are stretched to the square size, not cropped, so that nothing an image shows is cut off.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file

from tuneloop.data import ClassLabels, saved_as, write_meta
from tuneloop.data.batches import Batch, _labels
from tuneloop.data.files import SUFFIXES, Table, as_text, read_table
from tuneloop.data.text import LABEL_COLUMNS, MAX_LISTED, find_column, joined_source
from tuneloop.errors import ConfigError, DataError

IMAGE_COLUMNS = ("image", "path", "file", "filename", "image_path", "filepath")
GRAYSCALE_MODES = frozenset({"1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "LA"})
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
MAX_DEFAULT_SIZE = 224  # the input size of most pretrained image backbones
THREADED_ABOVE = 64  # files; below this a thread pool costs more than it saves
SKIPPED_FILES = frozenset({"thumbs.db", "desktop.ini"})

T = TypeVar("T")
R = TypeVar("R")


@saved_as("image")
@dataclass(frozen=True)
class ImageExamples(ClassLabels):
    """Images resized to one square size and (optionally) their labels, each with where it came from."""

    pixels: torch.Tensor  # uint8, images x channels x size x size
    labels: list[str] | None
    locations: list[str]  # the image's path, or for a table "file.csv, line 7"
    source: str

    def __len__(self) -> int:
        return len(self.locations)

    def subset(self, indices: list[int] | np.ndarray) -> ImageExamples:
        chosen = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        return ImageExamples(self.pixels[chosen], labels, [self.locations[i] for i in indices], self.source)

    def joined(self, other: ImageExamples) -> ImageExamples:
        """These images, then ``other``'s (training and validation images pooled; both of one size)."""
        labels = None if self.labels is None or other.labels is None else [*self.labels, *other.labels]
        return ImageExamples(torch.cat([self.pixels, other.pixels]), labels, [*self.locations, *other.locations],
                             self.source)

    def concat(self, other: ImageExamples) -> ImageExamples:
        """These images, then ``other``'s, as one set (of both sources); both must be of one size."""
        if self.pixels.shape[1:] != other.pixels.shape[1:]:
            raise ValueError(f"Images of {tuple(self.pixels.shape[1:])} and {tuple(other.pixels.shape[1:])} "
                             "cannot be joined; resize them to one size first.")
        joined = self.joined(other)
        return ImageExamples(joined.pixels, joined.labels, joined.locations, joined_source(self, other))

    def save(self, folder: Path, stem: str) -> None:
        """``stem``.json (labels, where each image came from) and ``stem``.safetensors (the pixels)."""
        save_file({"pixels": self.pixels.contiguous()}, str(folder / f"{stem}.safetensors"))
        write_meta(folder, stem, {"kind": self.saved_name, "labels": self.labels, "locations": self.locations,
                                  "source": self.source})

    @classmethod
    def load_saved(cls, folder: Path, stem: str, meta: dict) -> ImageExamples:
        pixels = load_file(str(folder / f"{stem}.safetensors"))["pixels"]
        return cls(pixels, meta["labels"], meta["locations"], meta["source"])

    def fingerprint(self) -> str:
        """A short hash of the pixels, their shape and the labels, so a run records exactly which data it saw."""
        digest = hashlib.sha256()
        digest.update(repr(tuple(self.pixels.shape)).encode() + b"\x1e")
        digest.update(np.ascontiguousarray(self.pixels.numpy()).tobytes())
        for label in self.labels or []:
            digest.update(b"\x1f" + label.encode())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Pixels:
    """Images as the training loop reads them: uint8 images x channels x height x width, and label ids."""

    images: torch.Tensor
    label_ids: list[int] | None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def lengths(self) -> np.ndarray:
        return np.ones(len(self.images), dtype=np.int64)

    def batch(self, indices: np.ndarray) -> Batch:
        indices = np.asarray(indices, dtype=np.int64)
        return Batch({"pixels": self.images[torch.from_numpy(indices)]}, _labels(self.label_ids, indices), indices)


def load_image_examples(source: str | Path, *, size: int | None = None, channels: int | None = None,
                        labelled: bool = True, path_col: str | None = None,
                        label_col: str | None = None) -> ImageExamples:
    """Read, decode and resize every image of a class-folder layout or a table of image paths.

    ``channels`` None means 1 when every image is grayscale, else 3. ``size`` None means the longer side of
    the most common image size, at most 224.
    """
    problems = []
    if size is not None and size < 1:
        problems.append(f"The 'size' of the images must be a positive number of pixels. Got {size} instead.")
    if channels not in (None, 1, 3):
        problems.append(f"The 'channels' of the images must be 1 (grayscale) or 3 (RGB). Got {channels} instead.")
    if problems:
        raise ConfigError(problems)
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such folder or file. Expected a folder of images "
                        f"or a table of image paths ({', '.join(sorted(SUFFIXES))}).")
    if source.is_dir():
        files, labels, locations = _read_folder(source, labelled)
    else:
        files, labels, locations = _read_table(source, labelled, path_col, label_col)
    if labelled:
        assert labels is not None
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise DataError(f"{source}: every image has the label '{classes[0]}'. "
                            "A classifier needs at least two classes; found one.")

    headers = _in_order(_read_header, files)
    _raise_unreadable(files, headers, locations, source)
    modes = [header[0] for header in headers]
    if channels is None:
        channels = 1 if all(mode in GRAYSCALE_MODES for mode in modes) else 3
    if size is None:
        (width, height), _ = Counter(header[1] for header in headers).most_common(1)[0]
        size = min(max(width, height), MAX_DEFAULT_SIZE)

    pixels = np.empty((len(files), channels, size, size), dtype=np.uint8)

    def decode(i: int) -> str | None:
        try:
            with Image.open(files[i]) as image:
                image.load()  # decode in full now, so that a truncated file fails here
                array = np.asarray(_resized(_converted(image, channels), size))
        except Exception as exc:  # Pillow raises many kinds for a broken file; each is reported
            return _reason(exc)
        pixels[i] = array[None] if channels == 1 else array.transpose(2, 0, 1)
        return None

    failures = _in_order(decode, range(len(files)))
    _raise_unreadable(files, failures, locations, source)
    return ImageExamples(torch.from_numpy(pixels), labels, locations, str(source))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def names_images(table: Table) -> bool:
    """Whether the table lists images: a column with a common name for image paths whose first value ends
    like an image file."""
    by_lower = {name.lower(): name for name in table.column_names}
    for candidate in IMAGE_COLUMNS:
        if candidate in by_lower:
            first = next((as_text(v) for v in table.columns[by_lower[candidate]] if as_text(v)), None)
            return first is not None and first.strip().lower().endswith(IMAGE_SUFFIXES)
    return False


def write_image_folder(pixels: np.ndarray | torch.Tensor, labels: Sequence[str], directory: str | Path) -> None:
    """Write images as PNG files ``directory/<label>/<i>.png`` (``i`` zero-padded, so sorted names keep the
    order): the class-folder layout ``load_image_examples`` reads.

    ``pixels`` is uint8, images x height x width (grayscale) or images x height x width x channels or
    images x channels x height x width (channels first when the second axis is 1, 3 or 4).
    """
    array = pixels.numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    if array.dtype != np.uint8:
        raise ValueError(f"Expected uint8 pixels (0-255); got {array.dtype}. Scale to 0-255 and cast to uint8.")
    if array.ndim not in (3, 4):
        raise ValueError(f"Expected images x height x width (x channels) pixels; got shape {array.shape}.")
    if len(array) != len(labels):
        raise ValueError(f"Got {len(array)} images but {len(labels)} labels; expected one label per image.")
    if array.ndim == 4:
        if array.shape[1] in (1, 3, 4):
            array = array.transpose(0, 2, 3, 1)
        if array.shape[-1] == 1:
            array = array[..., 0]
    directory = Path(directory)
    for label in set(labels):
        (directory / str(label)).mkdir(parents=True, exist_ok=True)
    width = len(str(max(len(array) - 1, 0)))

    def write(i: int) -> None:
        Image.fromarray(np.ascontiguousarray(array[i])).save(directory / str(labels[i]) / f"{i:0{width}d}.png")

    _in_order(write, range(len(array)))


def _read_folder(folder: Path, labelled: bool) -> tuple[list[Path], list[str] | None, list[str]]:
    if not labelled:
        files = _image_files(folder)
        if not files:
            raise DataError(f"{folder}: the folder is empty. Expected image files in it or in folders under it.")
        return files, None, [str(path) for path in files]
    class_folders = sorted(path for path in folder.iterdir() if path.is_dir() and not _hidden(path))
    if not class_folders:
        loose = [path for path in folder.iterdir() if path.is_file() and not _hidden(path)]
        found = f"found {len(loose)} files directly in it" if loose else "found nothing in it"
        raise DataError(f"{folder}: expected one subfolder of images per class (the class is the folder's "
                        f"name); {found} and no subfolders. For images without labels, read it unlabelled.")
    files: list[Path] = []
    labels: list[str] = []
    for class_folder in class_folders:
        members = _image_files(class_folder)
        if not members:
            raise DataError(f"{class_folder}: the folder of class '{class_folder.name}' holds no images. "
                            "Expected at least one image file in every class folder; remove the folder "
                            "or add images to it.")
        files.extend(members)
        labels.extend([class_folder.name] * len(members))
    return files, labels, [str(path) for path in files]


def _image_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` except hidden ones, in sorted order."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        found.extend(Path(root) / name for name in names
                     if not name.startswith(".") and name.lower() not in SKIPPED_FILES)
    return sorted(found)


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _read_table(path: Path, labelled: bool, path_col: str | None,
                label_col: str | None) -> tuple[list[Path], list[str] | None, list[str]]:
    table = read_table(path)
    path_name = find_column(table, path_col, IMAGE_COLUMNS, "image path", "--image-col")
    cells = [as_text(value) for value in table.columns[path_name]]
    _reject_empty(table, cells, path_name, "the image path is empty")
    labels = None
    if labelled:
        label_name = find_column(table, label_col, LABEL_COLUMNS, "label", "--label-col")
        if label_name == path_name:
            raise DataError(f"{table.path}: the image path and label columns are both '{path_name}'. "
                            "Name them with --image-col and --label-col.")
        raw_labels = [as_text(value) for value in table.columns[label_name]]
        _reject_empty(table, raw_labels, label_name, "the label is missing")
        labels = [label.strip() for label in raw_labels if label is not None]
    folder = table.path.parent
    files = [folder / cell.strip() for cell in cells if cell is not None]
    missing = [i for i, file in enumerate(files) if not file.is_file()]
    if missing:
        listed = "; ".join(f"{table.where(i, path_name)}: no such image file '{cells[i]}' (looked for {files[i]})"
                           for i in missing[:MAX_LISTED])
        more = f" (and {len(missing) - MAX_LISTED} more rows)" if len(missing) > MAX_LISTED else ""
        raise DataError(f"{listed}{more}. Relative paths are read from the table's folder, {folder}; "
                        f"{len(missing)} of {len(files)} images are missing.")
    return files, labels, [table.where(i) for i in range(len(table))]


def _reject_empty(table: Table, values: list[str | None], column: str, what: str) -> None:
    missing = [i for i, value in enumerate(values) if value is None]
    if missing:
        listed = "; ".join(table.where(i, column) for i in missing[:MAX_LISTED])
        more = f" (and {len(missing) - MAX_LISTED} more rows)" if len(missing) > MAX_LISTED else ""
        raise DataError(f"{listed}{more}: {what}. Expected a value in every row; "
                        f"{len(missing)} of {len(values)} rows have none.")


def _read_header(path: Path) -> tuple[str, tuple[int, int]] | str:
    """The mode and size of an image (read from its header only), or why it could not be read."""
    try:
        with Image.open(path) as image:
            return image.mode, image.size
    except Exception as exc:  # Pillow raises many kinds for a broken file; each is reported
        return _reason(exc)


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "cannot identify image file"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    return str(exc) or type(exc).__name__


def _raise_unreadable(files: list[Path], results: list, locations: list[str], source: Path) -> None:
    bad = [i for i, result in enumerate(results) if isinstance(result, str)]
    if not bad:
        return
    listed = "; ".join(_where(files[i], locations[i]) + f"not an image Pillow can read ({results[i]})"
                       for i in bad[:MAX_LISTED])
    more = f" (and {len(bad) - MAX_LISTED} more files)" if len(bad) > MAX_LISTED else ""
    raise DataError(f"{listed}{more}. Expected image files (PNG, JPEG, BMP, GIF, TIFF, WebP, ...) that decode in "
                    f"full; {len(bad)} of {len(files)} files under {source} do not. Remove or replace them.")


def _where(file: Path, location: str) -> str:
    return f"{file}: " if location == str(file) else f"{location}: {file} is "


def _converted(image: Image.Image, channels: int) -> Image.Image:
    if image.mode in SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit values at 255; scale the full 16-bit range to 8 bits instead.
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(wide / 257), 0, 255).astype(np.uint8))
    if channels == 1:
        return image if image.mode == "L" else image.convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")  # a palette with transparency converts to RGB only by way of RGBA
    return image if image.mode == "RGB" else image.convert("RGB")


def _resized(image: Image.Image, size: int) -> Image.Image:
    if image.size == (size, size):
        return image
    # Pillow's bilinear filter widens with the scale factor, so shrinking is antialiased; reducing_gap first
    # shrinks a much larger image by whole-pixel averaging, which is faster and as good.
    return image.resize((size, size), Image.BILINEAR, reducing_gap=3.0)


def _in_order(work: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``work`` on every item, in a thread pool when there are many (Pillow releases the GIL while it
    decodes and encodes); the results keep the items' order."""
    items = list(items)
    if len(items) <= THREADED_ABOVE:
        return [work(item) for item in items]
    with ThreadPoolExecutor() as pool:
        return list(pool.map(work, items))
