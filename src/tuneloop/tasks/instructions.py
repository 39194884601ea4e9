"""The instruction-tuning task: a causal language model fine-tuned to answer prompts with their completions (the
packaged SmolLM2-135M-Instruct by default, or any local Hugging Face causal LM), with LoRA adapters by default.

Examples are prompt/completion pairs or chats (``data/instructions.py``); the loss covers the answers only, and
the short examples of a training batch are packed into the rows its longest one needs, without seeing each other.
The metric is the validation loss (the mean negative log-likelihood of an answer token; perplexity is its
exponential); where answers are short (a known answer: a topic, a label, a number), a finished run also measures
exact match after greedy generation.
What a model that learned nothing scores is the validation loss of the model the fine-tune started from.

A saved run writes completions (``predict``), is judged by the promotion gate on each held-out example's loss
(an update must beat the production model and the model it started from, and keep the old examples' loss within
the tolerance: forgetting), and is compared for drift on the mean last hidden state of each prompt.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop.config import PRECISIONS, Recipe
from tuneloop.data.files import read_table
from tuneloop.data.instructions import (
    InstructionExamples,
    encode,
    encode_prompts,
    for_training,
    holds_instructions,
    one_per_row,
    read_instructions,
)
from tuneloop.errors import ConfigError, DataError
from tuneloop.models import get_adapter
from tuneloop.models.causal_lm import SMOLLM2, answer_limit, greedy_completions, model_cache, model_source
from tuneloop.tasks import DataOptions, DataSource, KindDefaults, Predictions, Prepared, label_folds, register
from tuneloop.training.device import pick_device
from tuneloop.training.loop import evaluate, predict_outputs
from tuneloop.training.objective import LANGUAGE_MODELLING
from tuneloop.tuning.family import Family
from tuneloop.tuning.policy import (
    MAX_EPOCHS,
    MIN_LEARNING_RATE,
    TEXT_RULES,
    Felt,
    LoraEverywhere,
    LoraRank,
    Move,
    Scale,
    Step,
    ToBestEpoch,
)
from tuneloop.tuning.strategies import DataFacts

KIND = "instruction-tuning"
EXACT_MATCH_LIMIT = 100  # validation examples a finished run answers to measure exact match
SHORT_ANSWER_TOKENS = 32  # answers up to this long have a known answer: exact match is measured
LM_MAX_RATE = 2e-3
PREDICT_BATCH = 16


def lm_learning_rate(trainable_layers: int | str, lora_rank: int = 0) -> float:
    """LoRA adapters start at zero and take rates near 2e-4 (the common choice for LoRA fine-tuning); every
    weight of a pretrained language model, a tenth of that."""
    return 2e-4 if lora_rank > 0 else 2e-5


@register
@dataclass
class InstructionTask(KindDefaults):
    """Checked training and validation instructions, the causal LM they tune, and their tokens per length."""

    train: InstructionExamples
    val: InstructionExamples
    backbone: str
    modality = "instructions"
    claim_order = 0  # before texts: a prompt column holds sentences, which a text classifier would claim
    default_model = "packaged SmolLM2-135M-Instruct"
    knobs = frozenset({"learning_rate", "epochs", "batch_size", "weight_decay", "warmup_ratio", "schedule",
                       "grad_clip", "patience", "metric", "precision", "seed", "init_seed", "max_length",
                       "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "l2sp"})
    kind = KIND
    adapter_name = "causal_lm"
    objective = LANGUAGE_MODELLING
    starts_pretrained = True  # runs of one recipe start from the same weights: their weights can be averaged
    predicts_text = True  # its predictions are completions (``Predictions.texts``)
    averages_predictions = False  # an ensemble would average class probabilities or values: an LM writes text
    error_name = "answer loss (mean negative log-likelihood per answer token)"
    naive_name = "the model the fine-tune started from"
    target_name = "answer lengths (words)"
    classes: list[str] = field(default_factory=list)  # a language model has none
    data_options: DataOptions | None = None
    _encoded: dict[int, tuple[Any, Any]] = field(default_factory=dict, repr=False)
    _start_loss: dict[int, float] = field(default_factory=dict, repr=False)

    # -- reading data ---------------------------------------------------------------------------------------

    @classmethod
    def claims(cls, source: DataSource) -> bool:
        """Instructions in memory, or a file with a 'messages' field or 'prompt' and 'completion' fields."""
        if isinstance(source.data, InstructionExamples):
            return True
        table = source.table
        return table is not None and holds_instructions(table.column_names)

    @classmethod
    def read(cls, data: Any, val: Any, options: DataOptions, *, model: str | None = None,
             keep_classes: bool = False) -> InstructionTask:
        """``model``: "smollm2" (the default), a .gguf file, a local Hugging Face causal-LM folder, or a saved
        run's model folder (its fine-tune continues)."""
        backbone = str(model) if model else SMOLLM2
        model_source(backbone)  # a model that cannot be found is an error before anything is written
        examples = read_examples(data)
        if val is None:
            if len(examples) < 2:
                raise DataError(f"{examples.source}: {len(examples)} example; at least 2 are needed to hold some "
                                "out for validation (or give a validation file).")
            order = np.random.default_rng(options.seed).permutation(len(examples))
            held = max(1, round(options.val_fraction * len(examples)))
            train, held_out = examples.subset(np.sort(order[held:])), examples.subset(np.sort(order[:held]))
        else:
            train, held_out = examples, read_examples(val)
        return cls(train, held_out, backbone)

    # -- the task -------------------------------------------------------------------------------------------

    @property
    def val_labels(self) -> list[str]:
        return []

    @property
    def family(self) -> Family:
        return LM_FAMILY

    def default_recipe(self, base: Recipe) -> Recipe:
        """``base`` as a language model fine-tunes by default: LoRA adapters of rank 8 on the attention, at
        2e-4, for 3 epochs of batches of 8 rows of up to 512 tokens, stopped after an epoch without gain."""
        return base.replace(lora_rank=8, lora_alpha=16.0, lora_dropout=0.05, lora_targets="attention",
                            learning_rate=2e-4, epochs=3, batch_size=8, max_length=512, warmup_ratio=0.05,
                            weight_decay=0.0, patience=1)

    def encoded(self, tokenizer: Any, max_length: int) -> tuple[Any, Any]:
        """Training rows (each batch packed) and validation rows (one example each) for ``max_length``, encoded
        once."""
        if max_length not in self._encoded:
            self._encoded[max_length] = (for_training(encode(tokenizer, self.train, max_length)),
                                         one_per_row(encode(tokenizer, self.val, max_length)))
        return self._encoded[max_length]

    def prepare(self, recipe: Recipe, device: torch.device, precision: str, *, cache_features: bool = True
                ) -> Prepared:
        """The causal LM for ``recipe`` (LoRA adapters where ``lora_rank`` > 0) and its training rows.
        The first time, the model as it starts is scored on the validation rows: what it learns is measured
        against that."""
        network, tokenizer = get_adapter(self.adapter_name).build(self.backbone, recipe, model_cache())
        train_rows, val_rows = self.encoded(tokenizer, recipe.max_length)
        network.answer_tokens = max(e.completion_tokens for e in train_rows.examples())
        if recipe.max_length not in self._start_loss:
            self._start_loss[recipe.max_length] = evaluate(network, val_rows, device, precision, self.objective).loss
        return Prepared(network, tokenizer, network, train_rows, val_rows)

    def chance_loss(self) -> float | None:
        """The validation loss of the model the fine-tune starts from (None before a run has measured it)."""
        return next(iter(self._start_loss.values()), None)

    def facts(self) -> DataFacts:
        return DataFacts(None, len(self.train), None, None, len(self.val))

    def cache_in(self, folder: Path) -> None:
        """Nothing per workspace: a converted GGUF model is kept in the models cache, shared by workspaces."""

    def baseline(self) -> dict[str, float]:
        """The starting model's validation loss and perplexity, where measured."""
        start = self.chance_loss()
        return {} if start is None else {"start_val_loss": start, "start_val_perplexity": math.exp(min(start, 50))}

    def final_scores(self, network: Any, tokenizer: Any, device: torch.device, precision: str,
                     trained: dict[str, Any]) -> dict[str, Any]:
        """A finished run's validation perplexity, its training tokens per second (prompt and answer tokens, from
        the examples per second in ``trained``), and where answers are short, its exact match on up to
        EXACT_MATCH_LIMIT validation examples (greedy generation)."""
        train_rows, val_rows = next(iter(self._encoded.values()))
        scored = evaluate(network, val_rows, device, precision, self.objective)
        found: dict[str, Any] = {"val_perplexity": math.exp(min(scored.loss, 50)),
                                 "train_tokens_per_s": trained["train_samples_per_s"] * train_rows.tokens
                                 / max(len(train_rows), 1)}
        sample = self.val.subset(range(min(len(self.val), EXACT_MATCH_LIMIT)))
        longest = max(e.completion_tokens for e in val_rows.examples())
        if longest <= SHORT_ANSWER_TOKENS:
            answers = greedy_completions(network, tokenizer, encode_prompts(tokenizer, sample, 10**9), longest + 2,
                                         device, precision)
            found.update(val_exact_match=exact_match(answers, sample.completions or []),
                         exact_match_on=len(sample))
        return found

    def pool(self) -> InstructionExamples:
        return self.train.joined(self.val)

    def pool_labels(self) -> list[float]:
        """Each example's answer length in words (what folds are stratified by)."""
        return [float(len(c.split())) for c in self.pool().completions or []]

    def folds(self, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return label_folds(self, k, seed)

    def fold(self, train_rows: np.ndarray, val_rows: np.ndarray | None = None) -> InstructionTask:
        pool = self.pool()
        val = self.val if val_rows is None else pool.subset(val_rows)
        return dataclasses.replace(self, train=pool.subset(train_rows), val=val, _encoded={}, _start_loss={})

    # -- a saved run of this kind, on new data --------------------------------------------------------------

    @classmethod
    def read_like(cls, run: Any, data: Any, options: DataOptions, *, labelled: bool) -> InstructionExamples:
        """Instructions in memory, a file of them (prompts alone where not ``labelled``), or a list of prompts."""
        if isinstance(data, InstructionExamples):
            return data
        if isinstance(data, (str, os.PathLike)):
            return read_instructions(data, labelled=labelled)
        prompts = list(data)
        if labelled or not all(isinstance(p, str) for p in prompts):
            raise ConfigError([f"run {run.id} answers prompts: give it a file of prompts and completions, or a "
                               "list of prompts to answer."])
        return InstructionExamples(prompts, None, [f"prompt {i + 1}" for i in range(len(prompts))], "prompts given")

    @classmethod
    def truth(cls, run: Any, examples: InstructionExamples) -> np.ndarray:
        """Each answer's length in words (what a drift check compares as the targets)."""
        return np.array([len(c.split()) for c in _completions(examples)], dtype=np.float64)

    @classmethod
    def predict(cls, run: Any, examples: InstructionExamples, precision: str = "auto",
                max_new_tokens: int | None = None) -> Predictions:
        """Each prompt's greedy completion (``texts``), at most ``max_new_tokens`` long (by default twice the
        longest answer the model trained on)."""
        if precision not in PRECISIONS:
            raise ConfigError([f"The 'precision' parameter of a language model must be one of "
                               f"{', '.join(PRECISIONS)}. Got {precision!r} instead."])
        network, tokenizer = run.model()
        device = pick_device()
        prompts = encode_prompts(tokenizer, examples, run.recipe.max_length)
        texts = greedy_completions(network, tokenizer, prompts, max_new_tokens or answer_limit(network), device,
                                   "fp32" if precision == "auto" else precision)
        return Predictions([], np.zeros((len(texts), 0), np.float32), [], texts=texts)

    @classmethod
    def choose_precision(cls, run: Any, examples: InstructionExamples) -> None:
        return None

    @classmethod
    def output_columns(cls, data: Any, examples: InstructionExamples) -> dict[str, list]:
        """The prompts predicted, to write their completions next to (a chat's prompt as JSON)."""
        if isinstance(data, (str, os.PathLike)):
            return {name: values for name, values in read_table(data).columns.items() if name != "completion"}
        return {"prompt": list(examples.prompts)}

    @classmethod
    def embed(cls, run: Any, examples: InstructionExamples) -> np.ndarray:
        """Each prompt's mean last hidden state."""
        network, tokenizer = run.model()
        device = pick_device()
        network.to(device).eval()
        prompts = encode_prompts(tokenizer, examples, run.recipe.max_length)
        out = []
        for start in range(0, len(prompts), PREDICT_BATCH):
            part = prompts[start:start + PREDICT_BATCH]
            longest = max(len(p) for p in part)
            ids = torch.zeros((len(part), longest), dtype=torch.long)
            mask = torch.zeros((len(part), longest), dtype=torch.long)
            for r, p in enumerate(part):
                ids[r, :len(p)], mask[r, :len(p)] = torch.tensor(p, dtype=torch.long), 1
            out.append(network.prompt_vectors(ids.to(device), mask.to(device)).cpu())
        return torch.cat(out).numpy()

    @classmethod
    def errors(cls, run: Any, examples: InstructionExamples, values: np.ndarray | None = None) -> np.ndarray:
        """Each example's answer loss (its mean negative log-likelihood per answer token) under the run's model:
        what the promotion gate compares. ``values`` are not read: a loss is not of a prediction."""
        network, tokenizer = run.model()
        return answer_losses(network, tokenizer, examples, run.recipe.max_length)

    @classmethod
    def naive_errors(cls, run: Any, examples: InstructionExamples) -> np.ndarray:
        """Each example's answer loss under the model the run's fine-tune started from (the pretrained one)."""
        network, tokenizer = get_adapter(cls.adapter_name).build(run.model()[0].base_model or SMOLLM2,
                                                                 run.recipe.replace(lora_rank=0), model_cache())
        return answer_losses(network, tokenizer, examples, run.recipe.max_length)

    @classmethod
    def scores(cls, run: Any, examples: InstructionExamples, predictions: Predictions) -> dict[str, float]:
        """The answer loss and perplexity over every answer token, and exact match of the completions."""
        network, tokenizer = run.model()
        rows = one_per_row(encode(tokenizer, examples, run.recipe.max_length))
        loss = evaluate(network, rows, pick_device(), "fp32", LANGUAGE_MODELLING).loss
        return {"loss": loss, "perplexity": math.exp(min(loss, 50)),
                "exact_match": exact_match(predictions.texts or [], _completions(examples))}


def read_examples(data: Any) -> InstructionExamples:
    if isinstance(data, InstructionExamples):
        return data
    if not isinstance(data, (str, os.PathLike)):
        raise ConfigError(["Instructions are read from a JSON Lines (or CSV) file of prompt/completion or messages "
                           f"fields, or given as InstructionExamples; got {type(data).__name__}."])
    return read_instructions(data)


def _completions(examples: InstructionExamples) -> list[str]:
    if examples.completions is None:
        raise DataError(f"{examples.source}: no completions to compare with (read without them).")
    return examples.completions


def exact_match(answers: Sequence[str], completions: Sequence[str]) -> float:
    """The share of answers equal to their completion, both stripped of surrounding whitespace."""
    if not completions:
        return float("nan")
    return float(np.mean([a.strip() == c.strip() for a, c in zip(answers, completions, strict=True)]))


def answer_losses(network: Any, tokenizer: Any, examples: InstructionExamples, max_length: int) -> np.ndarray:
    """Each example's mean negative log-likelihood per answer token under ``network``, in fp32."""
    outputs = predict_outputs(network, one_per_row(encode(tokenizer, examples, max_length)), pick_device(), "fp32",
                              LANGUAGE_MODELLING, batch_size=PREDICT_BATCH)
    return outputs[:, 0].astype(np.float64) / np.maximum(outputs[:, 1], 1.0)


# The rule table of LoRA fine-tuning. Capacity is the adapters' rank and the layers they adapt; a rank doubled
# at the same alpha halves the scale of each adapter's update (alpha / rank), so a raise of the rank goes with the
# same learning rate and is a change of capacity, not of step size. Regularization is lower rank, adapter
# dropout and weight decay (felt: raised to a pull the run's steps add up to), and fewer epochs.
LM_RULES: dict[str, tuple[Move, ...]] = {
    "overfitting": (
        Move("epochs", ToBestEpoch(), "stop at the best epoch"),
        Move("lora_dropout", Step(+0.1, high=0.3), "more dropout on the adapters"),
        Move("lora_rank", LoraRank(1 / 2), "lower LoRA rank"),
        Move("weight_decay", Felt(total=0.1, first=0.05, high=1.0), "more weight decay"),
        Move("learning_rate", Scale(1 / 2, low=MIN_LEARNING_RATE), "lower learning rate"),
    ),
    "underfitting": (
        Move("learning_rate", Scale(2, high=LM_MAX_RATE), "higher learning rate"),
        Move("lora_targets", LoraEverywhere(), "LoRA adapters on every linear layer, not only attention"),
        Move("lora_rank", LoraRank(2), "higher LoRA rank"),
        Move("epochs", Scale(2, high=MAX_EPOCHS), "more epochs"),
        Move("lora_dropout", Step(-0.05), "less dropout on the adapters"),
    ),
    "diverged": TEXT_RULES["diverged"],
    "too_slow": (
        Move("learning_rate", Scale(2, high=LM_MAX_RATE), "higher learning rate"),
        Move("epochs", Scale(2, high=MAX_EPOCHS), "more epochs"),
        Move("lora_targets", LoraEverywhere(), "LoRA adapters on every linear layer, not only attention"),
    ),
}
_LM_EXPLOIT = (
    Move("lora_targets", LoraEverywhere(), "converged: LoRA adapters on every linear layer"),
    Move("lora_rank", LoraRank(2), "a higher LoRA rank"),
    Move("learning_rate", Scale(1.5, high=LM_MAX_RATE), "a little higher learning rate"),
    Move("learning_rate", Scale(1 / 1.5, low=MIN_LEARNING_RATE), "a little lower learning rate"),
)
LM_RULES["good_fit"] = LM_RULES["noisy_validation"] = _LM_EXPLOIT
LM_EXPLORE = (
    Move("lora_rank", LoraRank(4), "a much higher LoRA rank"),
    Move("lora_targets", LoraEverywhere(), "LoRA adapters on every linear layer"),
    Move("epochs", Scale(2, high=MAX_EPOCHS), "longer training"),
)


def _first_adapters(base: Recipe, learning_rate: float, train_size: int | None) -> Recipe:
    return base.replace(learning_rate=learning_rate, lora_rank=base.lora_rank or 8)


def _lm_space() -> tuple[dict[str, Any], dict[str, list[Any]]]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = {
        "lora_rank": CategoricalDistribution((4, 8, 16, 32)),
        "lora_targets": CategoricalDistribution(("attention", "all-linear")),
        "lr_multiplier": FloatDistribution(0.2, 5.0, log=True),
        "lora_dropout": FloatDistribution(0.0, 0.2),
        "weight_decay": FloatDistribution(0.0, 0.1),
        "warmup_ratio": FloatDistribution(0.0, 0.2),
        "epochs": IntDistribution(1, 5),
        "batch_size": CategoricalDistribution((4, 8, 16)),
    }
    return space, {"lora_rank": [4, 16], "lr_multiplier": [0.5, 1.0, 2.0]}


LM_FAMILY = Family("causal-lm", LM_RULES, LM_EXPLORE, *_lm_space(), lm_learning_rate, _first_adapters,
                   "start with LoRA adapters of rank 8 on the attention: a few hundred thousand weights train",
                   adapters=True)
