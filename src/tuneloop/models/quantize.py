"""Dynamic int8 quantization for inference on the CPU, and how far its labels agree with fp32.

Dynamic quantization stores each ``nn.Linear``'s weights as int8 and quantizes the activations on the fly,
batch by batch; nothing needs calibrating. In a transformer encoder the linear layers hold most of the
compute, so the CPU predicts faster, most where it has int8 dot-product instructions (VNNI). A label may
change where two classes are close, so callers compare a sample against fp32 (``agreement``).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from tuneloop.errors import ModelError

AGREEMENT_SAMPLE = 256  # texts predicted with both fp32 and int8 to measure their agreement
MIN_AGREEMENT = 0.99  # below this share of identical labels, int8 predictions come with a warning


def quantize_int8(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantized to int8, to run on ``device``.

    The int8 kernels (fbgemm, onednn) exist for the CPU only: a GPU device, or a model whose weights are not
    on the CPU, raises ModelError.
    """
    devices = {torch.device(device).type} | {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        found = ", ".join(sorted(devices - {"cpu"}))
        raise ModelError(f"Precision 'int8' (dynamic int8 quantization) runs on the CPU only; got device {found}. "
                         "Use precision 'bf16' or 'fp32' on a GPU.")
    # torch.ao.quantization.quantize_dynamic is deprecated in favour of torchao, but on the CPU it is the fast
    # one (torchao's int8 dynamic quantization predicts slower than fp32 there); silence its two deprecation
    # warnings here only, by their exact text.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor, torch.quantize_per_channel", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=False)


def agreement(reference_probs: np.ndarray, quantized_probs: np.ndarray) -> float:
    """The share of examples (rows) whose most probable class is the same in both."""
    if reference_probs.shape != quantized_probs.shape:
        raise ValueError(f"Probabilities of different shapes: {reference_probs.shape} and {quantized_probs.shape}.")
    return float(np.mean(reference_probs.argmax(1) == quantized_probs.argmax(1)))


def agreement_sample(n: int, size: int = AGREEMENT_SAMPLE) -> np.ndarray:
    """Positions of at most ``size`` of ``n`` examples, spread evenly over them (the data may be sorted)."""
    return np.unique(np.linspace(0, n - 1, num=min(n, size)).round().astype(np.int64))


def int8_is_the_faster_match(share: float, fp32_seconds: float, int8_seconds: float) -> bool:
    """Whether int8 should predict where fp32 is the alternative: its labels agree with fp32's on at least
    MIN_AGREEMENT of a sample, and it predicted that sample in less time."""
    return share >= MIN_AGREEMENT and int8_seconds < fp32_seconds
