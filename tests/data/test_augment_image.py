"""Image augmentation: per-image crops, flips, rotations and colour in one batched call, mixup/CutMix with soft
labels, drawn reproducibly from (seed, epoch), and never applied to the plain (validation) images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from tuneloop.data.augment_image import AugmentedImages, augment_pixels, mix_batch
from tuneloop.data.images import Pixels


def digit_pixels(n: int = 16, size: int = 32, channels: int = 1) -> tuple[torch.Tensor, list[int]]:
    """scikit-learn digits as uint8 images x channels x size x size (0-16 scaled to 0-255), and their labels."""
    data = load_digits()
    images = torch.from_numpy(data.images[:n] * 255 / 16).float().unsqueeze(1)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8).repeat(1, channels, 1, 1)
    return images, data.target[:n].tolist()


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_strength_zero_only_scales_to_float():
    images, _ = digit_pixels(4)
    out = augment_pixels(images, 0.0, generator())
    assert out.dtype == torch.float32 and torch.equal(out, images.float() / 255)


@pytest.mark.parametrize("channels", [1, 3])
def test_augmented_pixels_keep_shape_and_stay_in_range(channels):
    images, _ = digit_pixels(8, channels=channels)
    out = augment_pixels(images, 1.0, generator())
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, images.float() / 255)
    floats = augment_pixels(images.float() / 255, 1.0, generator())
    assert torch.allclose(out, floats, atol=1e-6), "uint8 and [0, 1] float inputs are the same images"


def test_each_image_of_a_batch_gets_its_own_crop():
    images, _ = digit_pixels(1)
    out = augment_pixels(images.repeat(8, 1, 1, 1), 0.8, generator())
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.allclose(out[i], out[j], atol=1e-3), f"images {i} and {j} were augmented alike"


def test_without_flip_and_rotation_a_crop_stays_a_crop():
    # a left-right gradient stays increasing left to right when flips are off
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(16, 1, 32, 32).contiguous()
    out = augment_pixels(ramp, 0.01, generator(), flip=False)
    assert (out[:, :, 16, 1:] >= out[:, :, 16, :-1] - 1e-4).all()
    flipped = augment_pixels(ramp, 0.01, generator(), flip=True)
    assert (flipped[:, 0, 16, -1] < flipped[:, 0, 16, 0]).any(), "some images are mirrored"


def test_mixed_labels_are_probabilities_weighted_by_what_each_image_contributes():
    n, classes = 6, 6
    values = torch.linspace(0.1, 0.9, n)
    pixels = values.view(n, 1, 1, 1).expand(n, 1, 16, 16).contiguous()
    labels = torch.arange(n)
    seen = set()
    for seed in range(40):
        mixed, soft = mix_batch(pixels, labels, classes, generator(seed))
        assert soft.shape == (n, classes) and torch.allclose(soft.sum(1), torch.ones(n))
        for i in range(n):
            others = [j for j in range(n) if j != i and soft[i, j] > 0]
            if not others:
                continue  # mixed with itself
            (j,) = others
            share = (mixed[i] == values[j]).float().mean().item()
            if (mixed[i] == values[i]).any() and share > 0:
                seen.add("cutmix")
                assert soft[i, j].item() == pytest.approx(share, abs=1e-6), "the label weight is the pasted area"
            else:
                seen.add("mixup")
                expected = soft[i, i] * values[i] + soft[i, j] * values[j]
                assert torch.allclose(mixed[i], expected.expand_as(mixed[i]), atol=1e-6)
    assert seen == {"cutmix", "mixup"}


def test_label_smoothing_keeps_rows_summing_to_one():
    pixels = torch.rand(5, 3, 8, 8)
    _, soft = mix_batch(pixels, torch.tensor([0, 1, 2, 0, 1]), 3, generator(), label_smoothing=0.1)
    assert torch.allclose(soft.sum(1), torch.ones(5)) and soft.min() > 0


def epoch_batches(data: AugmentedImages, epoch: int, order: list[np.ndarray]):
    drawn = data.for_epoch(epoch)
    return [drawn.batch(indices) for indices in order]


def test_an_epoch_replays_identically_and_the_next_epoch_differs():
    images, labels = digit_pixels(16)
    data = AugmentedImages(Pixels(images, labels), strength=0.5, mixup=0.5, seed=7, num_classes=10)
    order = [np.arange(0, 8), np.arange(8, 16), np.array([3, 1, 4])]
    first, again = epoch_batches(data, 1, order), epoch_batches(data, 1, order)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.inputs["pixels"], b.inputs["pixels"]) and torch.equal(a.labels, b.labels)
    later = epoch_batches(data, 2, order)
    assert not torch.equal(first[0].inputs["pixels"], later[0].inputs["pixels"])
    other_seed = AugmentedImages(Pixels(images, labels), 0.5, 0.5, 8, 10)
    assert not torch.equal(first[0].inputs["pixels"], epoch_batches(other_seed, 1, order)[0].inputs["pixels"])


def test_labels_are_soft_only_in_mixed_batches():
    images, labels = digit_pixels(16)
    plain = Pixels(images, labels)
    never = AugmentedImages(plain, 0.3, mixup=0.0, seed=0, num_classes=10).for_epoch(0).batch(np.arange(16))
    assert never.labels.dtype == torch.long and never.labels.tolist() == labels
    assert never.inputs["pixels"].dtype == torch.float32
    always = AugmentedImages(plain, 0.3, mixup=1.0, seed=0, num_classes=10).for_epoch(0).batch(np.arange(16))
    assert always.labels.shape == (16, 10) and always.labels.dtype == torch.float32
    half = AugmentedImages(plain, 0.0, mixup=0.5, seed=0, num_classes=10).for_epoch(0)
    kinds = {half.batch(np.arange(8)).labels.dtype for _ in range(30)}
    assert kinds == {torch.long, torch.float32}


def test_plain_images_are_never_augmented():
    images, labels = digit_pixels(8)
    kept = images.clone()
    data = AugmentedImages(Pixels(images, labels), 1.0, 1.0, seed=0, num_classes=10)
    for epoch in range(3):
        data.for_epoch(epoch).batch(np.arange(8))
    assert torch.equal(images, kept)
    batch = data.batch(np.arange(8))
    assert batch.inputs["pixels"].dtype == torch.uint8 and torch.equal(batch.inputs["pixels"], kept)
    assert batch.labels.tolist() == labels and len(data) == 8 and data.label_ids == labels
