"""Reading labelled images: class folders and tables of paths, decoded in full, one channel count and size, and
errors that name the file (and the table line); Fashion-MNIST from its Debian package."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from tests.conftest import write_csv

from tuneloop.data.fashion_mnist import CLASSES, DEFAULT_ROOT, load_fashion_mnist, read_idx_images
from tuneloop.data.images import ImageExamples, Pixels, load_image_examples, write_image_folder
from tuneloop.errors import DataError


def digits(n: int = 100) -> tuple[np.ndarray, list[str]]:
    """The first ``n`` scikit-learn digits as uint8 8 x 8 images (0-16 scaled to 0-255) and their labels."""
    data = load_digits()
    images = np.rint(data.images[:n] * 255 / 16).astype(np.uint8)
    return images, [str(label) for label in data.target[:n]]


def save(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def gray(height: int = 8, width: int = 8, value: int = 0) -> np.ndarray:
    return np.full((height, width), value, dtype=np.uint8)


def two_classes(tmp_path, height: int = 8, width: int = 8):
    folder = tmp_path / "pets"
    save(folder / "cat" / "a.png", gray(height, width, 10))
    save(folder / "dog" / "b.png", gray(height, width, 200))
    return folder


def test_a_class_folder_reads_every_image_with_its_folder_as_label(tmp_path):
    images, labels = digits(100)  # over 64 files: decoded in the thread pool
    write_image_folder(images, labels, tmp_path / "digits")
    examples = load_image_examples(tmp_path / "digits")
    assert examples.pixels.shape == (100, 1, 8, 8) and examples.pixels.dtype == torch.uint8
    assert sorted(set(examples.labels)) == [str(d) for d in range(10)]
    # within a class, the zero-padded file names keep the original order, and same-size images are not resampled
    order = sorted(range(100), key=lambda i: (labels[i], i))
    assert examples.labels == [labels[i] for i in order]
    assert torch.equal(examples.pixels[:, 0], torch.from_numpy(images[order]))
    assert examples.locations[0].endswith(".png") and examples.source == str(tmp_path / "digits")


def test_grayscale_is_one_channel_and_any_colour_image_makes_three(tmp_path):
    folder = two_classes(tmp_path)
    assert load_image_examples(folder).pixels.shape[1] == 1
    save(folder / "dog" / "c.png", np.zeros((8, 8, 3), dtype=np.uint8) + np.array([255, 0, 0], dtype=np.uint8))
    mixed = load_image_examples(folder)
    assert mixed.pixels.shape == (3, 3, 8, 8)
    assert mixed.pixels[2, :, 0, 0].tolist() == [255, 0, 0]
    assert mixed.pixels[0, :, 0, 0].tolist() == [10, 10, 10], "a grayscale image is repeated over RGB"
    assert load_image_examples(folder, channels=1).pixels.shape[1] == 1


def test_images_resize_to_the_longer_side_of_the_most_common_size(tmp_path):
    folder = tmp_path / "shapes"
    save(folder / "a" / "1.png", gray(10, 20))
    save(folder / "a" / "2.png", gray(10, 20))
    save(folder / "b" / "3.png", gray(8, 8, 100))
    assert load_image_examples(folder).pixels.shape == (3, 1, 20, 20)
    resized = load_image_examples(folder, size=4)
    assert resized.pixels.shape == (3, 1, 4, 4) and resized.pixels[2].unique().tolist() == [100]
    for name in ("big1", "big2", "big3"):
        save(folder / "b" / f"{name}.png", gray(300, 300))
    assert load_image_examples(folder).pixels.shape[-1] == 224, "the default size is capped"


def test_a_16_bit_image_keeps_its_range(tmp_path):
    folder = two_classes(tmp_path)
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(folder / "cat" / "deep.png")
    examples = load_image_examples(folder)
    assert examples.pixels[1].unique().tolist() == [255]


def test_a_table_of_paths_reads_relative_paths_from_its_own_folder(tmp_path, monkeypatch):
    images, labels = digits(12)
    for i, image in enumerate(images):
        save(tmp_path / "data" / "img" / f"{i}.png", image)
    table = write_csv(tmp_path / "data" / "train.csv", ["Filename", "label"],
                      [[f"img/{i}.png", labels[i]] for i in range(12)])
    monkeypatch.chdir(tmp_path)
    examples = load_image_examples(table)
    assert examples.labels == labels
    assert torch.equal(examples.pixels[:, 0], torch.from_numpy(images))
    assert examples.locations[0] == f"{table}, line 2"


def test_an_unlabelled_folder_reads_every_image_below_it_in_sorted_order(tmp_path):
    folder = tmp_path / "new"
    save(folder / "b.png", gray(value=2))
    save(folder / "a.png", gray(value=1))
    save(folder / "sub" / "c.png", gray(value=3))
    save(folder / ".hidden" / "d.png", gray(value=4))
    (folder / ".DS_Store").write_bytes(b"\0\1junk")
    examples = load_image_examples(folder, labelled=False)
    assert examples.labels is None
    assert examples.pixels[:, 0, 0, 0].tolist() == [1, 2, 3]
    assert [p.rsplit("/", 1)[-1] for p in examples.locations] == ["a.png", "b.png", "c.png"]


def test_a_file_that_is_not_an_image_is_named_with_what_was_expected(tmp_path):
    folder = two_classes(tmp_path)
    (folder / "cat" / "notes.txt").write_text("not a picture")
    with pytest.raises(DataError, match=r"notes\.txt: not an image Pillow can read \(cannot identify image file\)"):
        load_image_examples(folder)


def test_a_truncated_image_fails_when_loaded_not_later(tmp_path):
    folder = two_classes(tmp_path, 32, 32)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    (folder / "dog" / "cut.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png: not an image Pillow can read \(image file is truncated"):
        load_image_examples(folder)


def test_an_unreadable_image_in_a_table_names_its_line(tmp_path):
    two_classes(tmp_path)
    (tmp_path / "bad.png").write_text("text")
    table = write_csv(tmp_path / "t.csv", ["image", "label"],
                      [["pets/cat/a.png", "cat"], ["bad.png", "dog"]])
    with pytest.raises(DataError, match=r"t\.csv, line 3: .*bad\.png is not an image Pillow can read"):
        load_image_examples(table)


def test_a_missing_image_in_a_table_names_its_line_and_path(tmp_path):
    two_classes(tmp_path)
    table = write_csv(tmp_path / "t.csv", ["path", "class"],
                      [["pets/cat/a.png", "cat"], ["pets/dog/gone.png", "dog"]])
    with pytest.raises(DataError, match=r"t\.csv, line 3, column 'path': no such image file 'pets/dog/gone\.png'"):
        load_image_examples(table)


def test_a_table_without_a_path_column_lists_its_columns(tmp_path):
    table = write_csv(tmp_path / "t.csv", ["picture", "label"], [["a.png", "cat"], ["b.png", "dog"]])
    with pytest.raises(DataError, match=r"columns: picture, label\. Name the column with --image-col"):
        load_image_examples(table)


def test_one_class_is_not_enough(tmp_path):
    save(tmp_path / "only" / "cat" / "a.png", gray())
    save(tmp_path / "only" / "cat" / "b.png", gray())
    with pytest.raises(DataError, match="at least two classes"):
        load_image_examples(tmp_path / "only")


def test_an_empty_class_folder_is_named(tmp_path):
    folder = two_classes(tmp_path)
    (folder / "bird").mkdir()
    with pytest.raises(DataError, match=r"bird: the folder of class 'bird' holds no images"):
        load_image_examples(folder)


def test_a_missing_or_empty_folder_is_reported(tmp_path):
    with pytest.raises(DataError, match="no such folder or file"):
        load_image_examples(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="expected one subfolder of images per class"):
        load_image_examples(tmp_path / "empty")
    with pytest.raises(DataError, match="the folder is empty"):
        load_image_examples(tmp_path / "empty", labelled=False)


def test_the_fingerprint_changes_with_one_pixel_and_a_subset_keeps_its_rows(tmp_path):
    images, labels = digits(20)
    write_image_folder(images, labels, tmp_path / "d")
    examples = load_image_examples(tmp_path / "d")
    changed = examples.pixels.clone()
    changed[3, 0, 4, 4] ^= 1
    other = ImageExamples(changed, examples.labels, examples.locations, examples.source)
    assert len(examples.fingerprint()) == 16 and examples.fingerprint() != other.fingerprint()
    part = examples.subset([4, 1])
    assert part.labels == [examples.labels[4], examples.labels[1]]
    assert torch.equal(part.pixels, examples.pixels[[4, 1]])


def test_pixels_batches_are_uint8_images_with_label_ids():
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2)
    data = Pixels(images, [0, 1, 0, 1])
    batch = data.batch(np.array([2, 0]))
    assert batch.inputs["pixels"].dtype == torch.uint8 and torch.equal(batch.inputs["pixels"], images[[2, 0]])
    assert batch.labels.tolist() == [0, 0] and list(data.lengths) == [1, 1, 1, 1]


def test_write_image_folder_takes_channels_first_or_last(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (2, 6, 6, 3), dtype=np.uint8)
    write_image_folder(rgb, ["a", "b"], tmp_path / "last")
    write_image_folder(torch.from_numpy(rgb).permute(0, 3, 1, 2), ["a", "b"], tmp_path / "first")
    last, first = load_image_examples(tmp_path / "last"), load_image_examples(tmp_path / "first")
    assert torch.equal(last.pixels, first.pixels)
    assert torch.equal(last.pixels, torch.from_numpy(rgb).permute(0, 3, 1, 2))


def test_fashion_mnist_loads_both_splits():
    if not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("the Debian package dataset-fashion-mnist is not installed")
    for split, count in (("train", 60000), ("test", 10000)):
        images, labels = load_fashion_mnist(split)
        assert images.shape == (count, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (count,) and labels.dtype == np.int64
        assert labels.min() == 0 and labels.max() == len(CLASSES) - 1


def test_an_idx_file_with_the_wrong_magic_number_is_rejected(tmp_path):
    path = tmp_path / "fake-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(struct.pack(">4I", 2049, 1, 2, 2) + bytes(4))
    with pytest.raises(DataError, match="expected the idx magic number 2051"):
        read_idx_images(path)
    with gzip.open(path, "wb") as handle:
        handle.write(struct.pack(">4I", 2051, 2, 2, 2) + bytes(4))
    with pytest.raises(DataError, match="the header says 2 x 2 x 2 values"):
        read_idx_images(path)


def test_missing_fashion_mnist_says_which_package_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", root=tmp_path)
