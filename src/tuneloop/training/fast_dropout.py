"""Dropout whose random masks are cheap on a CPU.

PyTorch draws a CPU dropout mask with a Mersenne-Twister ``bernoulli_``, one draw per element: profiled on
a 2-core CPU fine-tuning MiniLM with bf16 autocast, that took about a quarter of every training step, more
than the whole backward pass of some layers. Here a mask comes from a counter-based hash instead (the
murmur3 finalizer over element indices, keyed by two seeds drawn from torch's own generator, so
``torch.manual_seed`` still makes runs repeatable): a handful of vectorised integer operations on 16 bits
per element, about 15x faster. Each element is still dropped independently with probability p (to
1/65536) and kept elements are scaled by 1/(1-p), so this is the same regularizer as ``nn.Dropout``.

``cpu_fast_dropout(model)`` swaps it in for the duration of training only: the model is saved and
loaded with stock modules. On a GPU, stock dropout is already fast and nothing is swapped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

ATTENTION_NAME = "tuneloop_cpu_dropout"
_counter = torch.empty(0, dtype=torch.int32)


def _counter_of(n: int) -> torch.Tensor:
    global _counter
    if _counter.numel() < n:
        _counter = torch.arange(max(n, 2 * _counter.numel()), dtype=torch.int32)
    return _counter[:n]


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> tuple[torch.Tensor, float]:
    """A boolean mask keeping each element with probability about 1-p, and the exact keep probability."""
    numel = 1
    for size in shape:
        numel *= size
    seed_a, seed_b = torch.randint(-(2**31), 2**31 - 1, (2,), dtype=torch.int64).tolist()
    # Wrapping int32 arithmetic: multiply, xor-shift (masked to make the shift logical), two seeds mixed in.
    x = torch.add(_counter_of((numel + 1) // 2), seed_a)
    x.mul_(-1640531535).bitwise_xor_((x >> 16) & 0xFFFF)
    x.bitwise_xor_(seed_b).mul_(-2048144789).bitwise_xor_((x >> 13) & 0x7FFFF)
    x.mul_(-1028477387).bitwise_xor_((x >> 16) & 0xFFFF)
    threshold = round(p * 65536)
    halves = x.view(torch.int16)[:numel]  # two uniform 16-bit values per 32-bit hash
    return (halves >= threshold - 32768).view(shape), 1.0 - threshold / 65536


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    if p <= 0.0:
        return x
    mask, keep = keep_mask(x.shape, p)
    return torch.where(mask, x, 0.0) * (1.0 / keep)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with the cheap mask; identical in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        return fast_dropout(x, self.p)


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Scaled dot-product attention with dropout on the attention weights drawn by ``fast_dropout``.

    Without dropout (evaluation), PyTorch's fused kernel is used as usual.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout == 0.0 or query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = fast_dropout(torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype), dropout)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, _attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


@contextlib.contextmanager
def cpu_fast_dropout(model: nn.Module) -> Iterator[None]:
    """Within the block, the model's dropout (modules and attention) draws masks with ``keep_mask``."""
    swapped: list[tuple[nn.Module, str, nn.Dropout]] = []
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout and child.p > 0:
                replacement = FastDropout(child.p)
                replacement.train(child.training)
                setattr(parent, name, replacement)
                swapped.append((parent, name, child))
    configs = []
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == "sdpa" and config not in configs:
            configs.append(config)
    if configs:
        _register_attention()
    for config in configs:
        config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        for config in configs:
            config._attn_implementation = "sdpa"
        for parent, name, original in swapped:
            original.train(getattr(parent, name).training)
            setattr(parent, name, original)
