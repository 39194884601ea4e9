"""Image augmentation for fighting overfitting, drawn afresh each epoch and applied to a whole batch at once.

One ``strength`` knob (0 = off, 1 = the most the tuning loop will ask for) scales every edit:

- a random resized crop: the crop keeps a share of the image's area drawn from [1 - 0.6 x strength, 1], with
  its aspect ratio changed by up to a factor 1 + 0.33 x strength either way, at a random place inside the
  image. torchvision's ``RandomResizedCrop`` defaults (8-100% of the area) are for training from scratch on
  ImageNet; a fine-tuned backbone on a small data set does better with crops that keep most of the object;
- a horizontal flip, half of the time (off for images where left and right differ in meaning, such as text);
- a rotation of up to 15 degrees x strength; the corners it brings in from outside the image are reflections;
- brightness, contrast and (for colour images) saturation, each scaled by a factor drawn from
  [1 - 0.4 x strength, 1 + 0.4 x strength], as torchvision's ``ColorJitter(0.4, 0.4, 0.4)`` at strength 1.

Crop, flip and rotation are one affine map per image, so a whole batch is resampled by a single
``F.affine_grid`` + ``F.grid_sample`` call with a different crop, flip and angle for every image. That is why
these are hand-written tensor operations and not torchvision transforms: torchvision's v2 transforms draw one
set of parameters per call, so a batch with per-image draws needs a Python loop over its images.

A share ``mixup`` of the batches is then mixed with a shuffled copy of itself, by mixup (Zhang et al., 2018:
a weighted average of two images) or CutMix (Yun et al., 2019: a box of one image pasted into the other),
chosen with equal probability as timm does, with the mixing weight drawn from Beta(1, 1). Such a batch's
labels are class probabilities in the same proportions.

Every draw comes from one generator seeded by (seed, epoch) and consumed in batch order, so an epoch's
batches are the same every time it is replayed, a resumed run included. Validation images are never
augmented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tuneloop.data.batches import Batch, PerEpoch
from tuneloop.data.images import Pixels

MAX_AREA_LOSS = 0.6  # at strength 1 a crop keeps at least 40% of the image's area
MAX_ASPECT_CHANGE = 0.33  # at strength 1 the crop's aspect ratio changes by a factor of up to 1.33
MAX_DEGREES = 15.0
MAX_COLOR_CHANGE = 0.4
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of red, green and blue in the perceived brightness


def augment_pixels(pixels: torch.Tensor, strength: float, generator: torch.Generator, *,
                   flip: bool = True) -> torch.Tensor:
    """Images x channels x height x width (uint8, or float in [0, 1]) cropped, flipped, rotated and colour
    jittered, each image with its own draw; float32 in [0, 1] of the same shape. Strength 0 changes nothing."""
    x = as_float(pixels)
    if strength <= 0 or len(x) == 0:
        return x
    n, channels, height, width = x.shape
    u = torch.rand((n, 9), generator=generator, device=generator.device).to(x.device, torch.float32)

    area = 1 - MAX_AREA_LOSS * strength * u[:, 0]
    ratio = torch.exp(math.log(1 + MAX_ASPECT_CHANGE * strength) * (2 * u[:, 1] - 1))
    crop_w = torch.sqrt(area * ratio).clamp(max=1)  # the crop's share of the image's width and height
    crop_h = torch.sqrt(area / ratio).clamp(max=1)
    mirror = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones(n, device=x.device)
    angle = math.radians(MAX_DEGREES) * strength * (2 * u[:, 5] - 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # The map from output to input coordinates, both normalized to [-1, 1]: scale to the crop (mirrored), then
    # rotate. The rotation is in pixels, so its off-diagonal terms carry the aspect ratio of the image.
    a00, a01 = cos * mirror * crop_w, -sin * (height / width) * crop_h
    a10, a11 = sin * (width / height) * mirror * crop_w, cos * crop_h
    # The crop's centre may move as far as keeps the whole (rotated) crop inside the image.
    reach_x = (1 - a00.abs() - a01.abs()).clamp(min=0)
    reach_y = (1 - a10.abs() - a11.abs()).clamp(min=0)
    shift_x, shift_y = reach_x * (2 * u[:, 2] - 1), reach_y * (2 * u[:, 3] - 1)
    theta = torch.stack([torch.stack([a00, a01, shift_x], 1), torch.stack([a10, a11, shift_y], 1)], 1)
    grid = F.affine_grid(theta, [n, channels, height, width], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def factor(column: int) -> torch.Tensor:
        return (1 + MAX_COLOR_CHANGE * strength * (2 * u[:, column] - 1)).view(n, 1, 1, 1)

    x = x * factor(6)
    mean = _luma(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor(7) + mean
    if channels == 3:
        gray = _luma(x)
        x = (x - gray) * factor(8) + gray
    return x.clamp(0, 1)


def mix_batch(pixels: torch.Tensor, labels: torch.Tensor, num_classes: int, generator: torch.Generator, *,
              label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch mixed with a shuffled copy of itself by mixup or CutMix (equally likely), and its labels as
    class probabilities (images x classes, rows summing to 1) weighted by how much of each image is in it."""
    x = as_float(pixels)
    n, _, height, width = x.shape
    weight, coin, top_u, left_u = torch.rand(4, generator=generator, device=generator.device).tolist()
    partner = torch.randperm(n, generator=generator, device=generator.device).to(x.device)
    targets = F.one_hot(labels, num_classes).to(torch.float32)
    targets = targets * (1 - label_smoothing) + label_smoothing / num_classes
    if coin < 0.5:  # mixup; Beta(1, 1) is the uniform distribution, so ``weight`` is a draw from it
        mixed = weight * x + (1 - weight) * x[partner]
        kept = weight
    else:  # CutMix: a box of (1 - weight) of the area, wholly inside the image; labels weigh its actual area
        box_h = round(height * math.sqrt(1 - weight))
        box_w = round(width * math.sqrt(1 - weight))
        top = int(top_u * (height - box_h + 1))
        left = int(left_u * (width - box_w + 1))
        mixed = x.clone()
        mixed[:, :, top:top + box_h, left:left + box_w] = x[partner, :, top:top + box_h, left:left + box_w]
        kept = 1 - box_h * box_w / (height * width)
    return mixed, kept * targets + (1 - kept) * targets[partner]


def as_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels scaled to float32 in [0, 1]; float pixels as float32."""
    if pixels.dtype == torch.uint8:
        return pixels.to(torch.float32) / 255
    return pixels.to(torch.float32)


def _luma(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x.mean(dim=1, keepdim=True)
    weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


@dataclass(frozen=True)
class AugmentedEpoch:
    """One epoch of augmented training images: each batch is augmented as it is read, with draws taken from
    ``generator`` in batch order."""

    plain: Pixels
    strength: float
    mixup: float
    num_classes: int
    flip: bool
    generator: torch.Generator

    def __len__(self) -> int:
        return len(self.plain)

    @property
    def lengths(self) -> np.ndarray:
        return self.plain.lengths

    @property
    def label_ids(self) -> list[int] | None:
        return self.plain.label_ids

    def batch(self, indices: np.ndarray) -> Batch:
        """Float32 pixels in [0, 1]; labels are class ids, or class probabilities when the batch is mixed."""
        plain = self.plain.batch(indices)
        pixels = augment_pixels(plain.inputs["pixels"], self.strength, self.generator, flip=self.flip)
        labels = plain.labels
        if self.mixup > 0 and labels is not None:
            if torch.rand(1, generator=self.generator).item() < self.mixup:
                pixels, labels = mix_batch(pixels, labels, self.num_classes, self.generator)
        return Batch({"pixels": pixels}, labels, plain.indices)


@dataclass(frozen=True)
class AugmentedImages(PerEpoch):
    """Training images augmented afresh each epoch (see the module docstring); read as ``plain`` elsewhere."""

    plain: Pixels
    strength: float
    mixup: float  # the share of batches mixed, in [0, 1]
    seed: int
    num_classes: int
    flip: bool = True

    def for_epoch(self, epoch: int) -> AugmentedEpoch:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        return AugmentedEpoch(self.plain, self.strength, self.mixup, self.num_classes, self.flip, generator)
