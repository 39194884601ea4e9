"""The image-classification task: checked images and classes, decoded once into one uint8 tensor, and a
network that is either the packaged EfficientNet-Lite0 (ImageNet weights, a new head), a small CNN trained
from scratch, or a previous image run's network (a base trained from scratch, fine-tuned on new classes).

Resizing is done here, once, to the size the network will see; normalization is the network's own. The
size and channel count are saved with the model, so prediction reads new images exactly as training did.
With the pretrained body frozen whole (``trainable_layers`` 0) and nothing augmented, the body's pooled
output is the same every epoch and every trial: it is computed once and the head trains on it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tuneloop.config import PRECISIONS, Recipe
from tuneloop.data.augment_image import AugmentedImages
from tuneloop.data.batches import Features
from tuneloop.data.feature_cache import FeatureCache, feature_key
from tuneloop.data.images import ImageExamples, Pixels, load_image_examples, names_images
from tuneloop.data.text import check_validation_labels, class_names, stratified_split
from tuneloop.errors import ConfigError, ModelError
from tuneloop.models import get_adapter
from tuneloop.models.image_nets import ADAPTER_FILE, ARCHITECTURES, ImagePreprocessing, build_image_network
from tuneloop.tasks import (
    COMMON_KNOBS,
    DataOptions,
    DataSource,
    KindDefaults,
    Predictions,
    Prepared,
    class_ids,
    classes_keeping,
    fewest_per_class,
    label_folds,
    majority_rate,
    register,
)
from tuneloop.training.device import autocast, pick_device, resolve_precision
from tuneloop.training.loop import predict_probabilities
from tuneloop.training.objective import CLASSIFICATION
from tuneloop.tuning.family import Family, first_head, small_network
from tuneloop.tuning.policy import IMAGE_EXPLORE, IMAGE_RULES, IMAGE_SCRATCH_EXPLORE, IMAGE_SCRATCH_RULES
from tuneloop.tuning.space import (
    CNN_GRID,
    CNN_SPACE,
    IMAGE_GRID,
    IMAGE_SPACE,
    image_learning_rate,
    scratch_learning_rate,
)
from tuneloop.tuning.strategies import DataFacts

KIND = "image-classification"
DEFAULT_ARCHITECTURE = "efficientnet-lite0"
PRETRAINED_MIN_SIZE = 64  # smaller images are upscaled for EfficientNet: five stride-2 stages need room
CNN_MAX_STAGES = 8
FEATURE_BATCH = 64


IMAGE_FAMILY = Family("image", IMAGE_RULES, IMAGE_EXPLORE, IMAGE_SPACE, IMAGE_GRID, image_learning_rate, first_head,
                      "start with the cheapest capacity: the head alone on the frozen image body")
IMAGE_SCRATCH_FAMILY = Family("image-scratch", IMAGE_SCRATCH_RULES, IMAGE_SCRATCH_EXPLORE, CNN_SPACE, CNN_GRID,
                              scratch_learning_rate, small_network(2),
                              "start with the cheapest capacity: a CNN of two stages, 32 and 64 channels")

@register
@dataclass
class ImageTask(KindDefaults):
    """Checked training and validation images with their classes, and the network they train."""

    train: ImageExamples
    val: ImageExamples
    classes: list[str]
    architecture: str  # efficientnet-lite0, small-cnn, or a previous image run's model folder
    saved_architecture: str | None = None  # the network of that saved run, read once when loading
    keep_classes: bool = False  # an update of that saved run: its classes stay, its head grows to new ones
    modality = "image"
    claim_order = 0  # first: a table naming image files is images, whatever its other columns hold
    default_model = "efficientnet-lite0 (ImageNet weights)"  # what it trains where no model is named
    knobs = COMMON_KNOBS | {"trainable_layers", "l2sp", "layer_lr_decay", "mixup", "hidden_layers",
                            "hidden_units", "init"}
    adapter_name = "image_net"
    kind = KIND
    objective = CLASSIFICATION
    features: FeatureCache = field(default_factory=FeatureCache)  # the frozen body's pooled outputs
    data_options: DataOptions | None = None  # how the data was read and split (set by pipeline.load_task)

    @classmethod
    def claims(cls, source: DataSource) -> bool:
        """Images in memory, a folder (of class folders of images), or a table whose path column (``image_col``,
        or a common name) names image files; not where a text column is named."""
        options = source.options
        if options.image_col is not None or isinstance(source.data, ImageExamples) or source.is_folder:
            return True
        return options.text_col is None and source.table is not None and names_images(source.table)

    @classmethod
    def read(cls, data: Any, val: Any, options: DataOptions, *, model: str | None = None,
             keep_classes: bool = False) -> ImageTask:
        size = options.image_size
        if size is not None and not (isinstance(size, int) and 8 <= size <= 1024):
            raise ConfigError([f"The 'image_size' parameter must be an int in the range [8, 1024]. "
                               f"Got {size!r} instead."])
        return cls.load(data, val, model=model, label_col=options.label_col, val_fraction=options.val_fraction,
                        seed=options.seed, image_size=size, image_col=options.image_col, keep_classes=keep_classes)

    @classmethod
    def load(cls, data: str | os.PathLike | ImageExamples, val: str | os.PathLike | ImageExamples | None, *,
             model: str | None, label_col: str | None, val_fraction: float, seed: int,
             image_size: int | None = None, image_col: str | None = None, keep_classes: bool = False) -> ImageTask:
        """Read, decode and check every image (all that can fail on bad input) before any workspace write.

        Images are resized to ``image_size``, else to the model's size where ``model`` is a previous run,
        else to their most common size (at least PRETRAINED_MIN_SIZE for EfficientNet). With
        ``keep_classes`` (an update of the previous run ``model``) its classes stay, in their order, and the
        data's new classes are added after them."""
        architecture = model or DEFAULT_ARCHITECTURE
        start, saved_architecture = _saved_model(architecture)
        if keep_classes and start is None:
            raise ConfigError([f"Keeping a model's classes needs a saved image run's model folder; got {model!r}."])
        if start is None and architecture not in ARCHITECTURES:
            raise ConfigError([f"The 'model' of an image task must be one of {', '.join(ARCHITECTURES)} or the "
                               f"folder of a saved image run. Got {architecture!r} instead."])
        size = image_size or (start.size if start else None)
        channels = start.channels if start else (3 if architecture == "efficientnet-lite0" else None)
        train = data if isinstance(data, ImageExamples) else _load(data, size, channels, label_col, image_col)
        if size is None and architecture == "efficientnet-lite0" and train.pixels.shape[-1] < PRETRAINED_MIN_SIZE:
            # Decoded again at the larger size, by the same resize that prediction will use on new images.
            train = (resized(train, PRETRAINED_MIN_SIZE) if isinstance(data, ImageExamples)
                     else _load(data, PRETRAINED_MIN_SIZE, channels, label_col, image_col))
        size, channels = int(train.pixels.shape[-1]), int(train.pixels.shape[1])
        classes = classes_keeping(start.classes, train.labels) if keep_classes else class_names(train)
        if val is None:
            train, val_examples = stratified_split(train, val_fraction, seed)
        else:
            val_examples = (val if isinstance(val, ImageExamples)
                            else _load(val, size, channels, label_col, image_col))
            val_examples = resized(val_examples, size)
            check_validation_labels(val_examples, classes)
        return cls(train, val_examples, classes, architecture, saved_architecture, keep_classes)

    # -- a saved run of this kind, on new images ------------------------------------------------------------

    @classmethod
    def read_like(cls, run: Any, data: Any, options: DataOptions, *, labelled: bool) -> ImageExamples:
        """Images of a folder or a table of paths, resized and converted as the run's training images were."""
        if isinstance(data, ImageExamples):
            return data
        if not isinstance(data, (str, os.PathLike)):
            raise ConfigError([f"run {run.id} classifies images: give it a folder of images or a table of paths."])
        _, preprocessing = run.model()
        return load_image_examples(data, size=preprocessing.size, channels=preprocessing.channels,
                                   labelled=labelled, path_col=options.image_col, label_col=options.label_col)

    @classmethod
    def truth(cls, run: Any, images: ImageExamples) -> np.ndarray:
        """The class ids of the images' labels (a label the run does not know is an error naming it)."""
        return class_ids(images, run.classes)

    @classmethod
    def predict(cls, run: Any, images: ImageExamples, precision: str = "auto") -> Predictions:
        """Labels and class probabilities for images (resized to the run's size where made at another)."""
        if precision not in PRECISIONS:
            raise ConfigError([f"The 'precision' parameter of an image model must be one of {', '.join(PRECISIONS)}. "
                               f"Got {precision!r} instead."])
        model, preprocessing = run.model()
        images = resized(images, preprocessing.size)
        device = pick_device()
        probabilities = predict_probabilities(model, Pixels(images.pixels, None), device,
                                              resolve_precision(precision, device))
        return Predictions([run.classes[i] for i in probabilities.argmax(1)], probabilities, run.classes)

    @classmethod
    def choose_precision(cls, run: Any, images: ImageExamples) -> None:
        """Nothing to measure: "auto" is what it means on the device."""
        return None

    @classmethod
    def output_columns(cls, data: Any, images: ImageExamples) -> dict[str, list]:
        """Each image's path, to write its predictions next to."""
        return {"image": images.locations}

    @classmethod
    def embed(cls, run: Any, images: ImageExamples) -> np.ndarray:
        """The body's pooled features of each image (what the head reads)."""
        model, preprocessing = run.model()
        device = pick_device()
        pixels = resized(images, preprocessing.size).pixels
        return pooled_features(model, Pixels(pixels, None), device, resolve_precision("auto", device)).numpy()

    @property
    def backbone(self) -> str:
        """What the run records as its backbone: the architecture, or the run folder it starts from."""
        return self.architecture

    @property
    def family(self) -> Family:
        """The guided policy's rule table and the search space: a pretrained body to unfreeze (EfficientNet,
        or a saved run), or a fresh small CNN, whose capacity is its width and depth."""
        return IMAGE_SCRATCH_FAMILY if self.architecture == "small-cnn" else IMAGE_FAMILY

    def pool(self) -> ImageExamples:
        """Every labelled image: the training ones, then the validation ones."""
        return self.train.joined(self.val)

    def folds(self, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return label_folds(self, k, seed)

    def pool_labels(self) -> list[str]:
        return list(self.pool().labels or [])

    def fold(self, train_rows: np.ndarray, val_rows: np.ndarray | None = None) -> ImageTask:
        """A task on the pooled images ``train_rows`` (training) and ``val_rows`` (validation; without them,
        this task's validation images, for the record only)."""
        pool = self.pool()
        val = self.val if val_rows is None else pool.subset(val_rows)
        return dataclasses.replace(self, train=pool.subset(train_rows), val=val)

    @property
    def starts_pretrained(self) -> bool:
        """Runs start from the same pretrained (or saved) body, so their weights can be averaged; a small CNN
        starts from random weights."""
        return self.architecture != "small-cnn"

    def default_recipe(self, base: Recipe) -> Recipe:
        """``base`` (the defaults) as this network trains by default: a small CNN from random weights at a
        from-scratch rate for many epochs, stopped by validation (the fine-tune defaults leave it far short:
        8x8 digits 0.73 after 15 epochs); a pretrained or saved network as given."""
        if self.architecture == "small-cnn" and self.saved_architecture is None:
            return base.replace(learning_rate=2e-3, epochs=40, patience=8)
        return base

    def facts(self) -> DataFacts:
        """What the guided search sizes its moves by: the body's layer groups, the examples, the rarest class's."""
        return DataFacts(self.num_layers, len(self.train), fewest_per_class(self.train.labels), None, len(self.val))

    def cache_in(self, folder: Path) -> None:
        """Keep the frozen body's pooled outputs in ``folder`` (a workspace's cache), shared with later trials."""
        self.features = FeatureCache(folder)

    def baseline(self) -> dict[str, float]:
        """What a model that learned nothing scores on the validation images."""
        return majority_rate(self.val_labels)

    @property
    def num_layers(self) -> int | None:
        """Layer groups below the head (what ``trainable_layers`` counts), where the network has them."""
        return 18 if self.architecture == "efficientnet-lite0" else None

    @property
    def trains_faster_in_fp32(self) -> bool:
        """EfficientNet does, on a CPU and on a GPU (depthwise convolutions); the small CNN trains faster in
        bf16 where bf16 is native."""
        return "efficientnet-lite0" in (self.architecture, self.saved_architecture)

    @property
    def val_labels(self) -> list[str]:
        return list(self.val.labels or [])

    @property
    def preprocessing(self) -> ImagePreprocessing:
        return ImagePreprocessing(int(self.train.pixels.shape[-1]), int(self.train.pixels.shape[1]), self.classes)

    def pixels(self, part: ImageExamples) -> Pixels:
        index = {name: i for i, name in enumerate(self.classes)}
        return Pixels(part.pixels, [index[label] for label in part.labels or []])

    def network(self, recipe: Recipe) -> nn.Module:
        """A fresh network for ``recipe``: pretrained (or a saved run's) weights unless ``init`` is scratch;
        for the small CNN, ``hidden_layers`` are its stages and ``hidden_units`` its last stage's channels."""
        outputs, channels = len(self.classes), int(self.train.pixels.shape[1])
        if self.architecture not in ARCHITECTURES:
            if recipe.init == "scratch":
                raise ConfigError(["init 'scratch' starts from random weights, but the model is a saved run "
                                   f"({self.architecture}). Give --model small-cnn or efficientnet-lite0 instead."])
            network = get_adapter(self.adapter_name).load_start(
                self.architecture, outputs, recipe.dropout, grow_to=self.classes if self.keep_classes else None)
        else:
            network = build_image_network(
                self.architecture, outputs, in_channels=channels, recipe_dropout=recipe.dropout,
                width=min(4096, max(8, recipe.hidden_units)), stages=min(CNN_MAX_STAGES, max(1, recipe.hidden_layers)),
                pretrained=self.architecture == "efficientnet-lite0" and recipe.init == "pretrained")
        network.set_trainable(recipe.trainable_layers)
        return network

    def prepare(self, recipe: Recipe, device: torch.device, precision: str, *, cache_features: bool = True
                ) -> Prepared:
        network = self.network(recipe)
        train_set, val_set = self.pixels(self.train), self.pixels(self.val)
        if recipe.augment > 0 or recipe.mixup > 0:
            augmented = AugmentedImages(train_set, recipe.augment, recipe.mixup, recipe.seed, len(self.classes))
            return Prepared(network, self.preprocessing, network, augmented, val_set, None,
                            "off: augmentation changes the training images every epoch")
        if recipe.trainable_layers == 0 and cache_features and network.pretrained_parameter_names():
            train_vectors, val_vectors = (self.cached_features(network, part, pixels, device, precision)
                                          for part, pixels in ((self.train, train_set), (self.val, val_set)))
            return Prepared(network, self.preprocessing, ImageHead(network), train_vectors, val_vectors, "vectors")
        return Prepared(network, self.preprocessing, network, train_set, val_set)

    def cached_features(self, network: nn.Module, part: ImageExamples, pixels: Pixels, device: torch.device,
                        precision: str) -> Features:
        """The frozen body's pooled output for every image, computed once per key (see FeatureCache)."""
        key = feature_key(self.architecture, part.fingerprint(), int(part.pixels.shape[-1]), precision,
                          "image-vectors")
        vectors = self.features.get(key, lambda: pooled_features(network, pixels, device, precision))
        return Features(vectors, pixels.label_ids)


class ImageHead(nn.Module):
    """The network's dropout and head alone, fed cached pooled features: what trains when the body is
    frozen whole. Its parameters are the network's own, so training it trains the network."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.network.classify(features)

    def parameter_depths(self) -> dict[str, int]:
        return {f"network.{k}": v for k, v in self.network.parameter_depths().items()}

    def pretrained_parameter_names(self) -> list[str]:
        return [f"network.{name}" for name in self.network.pretrained_parameter_names()]


def resized(examples: ImageExamples, size: int) -> ImageExamples:
    """The examples at ``size`` x ``size`` (bilinear, antialiased when shrinking), unchanged if already so."""
    if examples.pixels.shape[-1] == size and examples.pixels.shape[-2] == size:
        return examples
    scaled = F.interpolate(examples.pixels.float(), size=(size, size), mode="bilinear", align_corners=False,
                           antialias=size < examples.pixels.shape[-1])
    pixels = scaled.round().clamp(0, 255).to(torch.uint8)
    return ImageExamples(pixels, examples.labels, examples.locations, examples.source)


def _load(source: str | os.PathLike, size: int | None, channels: int | None, label_col: str | None,
          image_col: str | None) -> ImageExamples:
    return load_image_examples(source, size=size, channels=channels, label_col=label_col, path_col=image_col)


def _saved_model(model: str) -> tuple[ImagePreprocessing | None, str | None]:
    """The preprocessing and architecture of a saved image run named by ``model`` (a folder), or Nones when
    it names none."""
    folder = Path(model)
    if model in ARCHITECTURES or not (folder / ADAPTER_FILE).is_file():
        return None, None
    try:
        info = json.loads((folder / ADAPTER_FILE).read_text())
    except (OSError, ValueError) as error:
        raise ModelError(f"{folder}: not a readable model folder ({error}).") from error
    if info.get("adapter") != "image_net":
        raise ConfigError([f"--model {model}: a {info.get('adapter')} model, not an image model; an image task can "
                           "start only from a saved image run."])
    return ImagePreprocessing(int(info["image_size"]), int(info["channels"]), list(info["classes"])), info.get("arch")


def pooled_features(network: nn.Module, pixels: Pixels, device: torch.device, precision: str,
                    batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """The network body's pooled output for every image, in order (evaluation mode: BatchNorm's running
    statistics, no dropout)."""
    network.to(device).eval()  # outside inference mode: the head moved inside it could not train after
    out = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            with autocast(device, precision):
                out.append(network.features(pixels.images[start:start + batch_size].to(device)).float().cpu())
    return torch.cat(out)
