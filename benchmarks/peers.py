"""Peer methods shared by the benchmark scripts: Hugging Face ``Trainer`` at its best CPU settings, its Optuna
hyperparameter search with the best trial's model kept, and MiniLM sentence embeddings mean-pooled as
sentence-transformers pools them.

Run from the repository root, the scripts import this module as ``peers`` (Python puts a script's own folder
first on the import path).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
import torch
import transformers
from torch import nn
from transformers import (
    AutoModel,
    DataCollatorWithPadding,
    EvalPrediction,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.trainer_utils import BestRun, PredictionOutput

from tuneloop.data.text import TextExamples
from tuneloop.training.metrics import classification_metrics


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next((set(line.split(":", 1)[1].split()) for line in handle if line.startswith("flags")), set())
    except OSError:
        return set()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        return ""


def cpu_kind() -> str:
    """The CPU's model name and the instruction-set flags that decide its fast precisions, for a result to say
    which kind of CPU measured it."""
    shown = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in cpu_flags()]
    return f"{cpu_model() or 'unknown CPU'} ({', '.join(shown) or 'no AVX2'})"


def native_bf16() -> bool:
    """bf16 is worth using on a CPU only where it computes it natively (AVX-512 BF16 or AMX); emulated, it is slower
    than fp32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def t_interval(values: list[float]) -> float | None:
    """Half-width of the 95% t-interval of the mean (n - 1 degrees of freedom); None for fewer than 2 values."""
    if len(values) < 2:
        return None
    from scipy import stats

    return float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The encoder's last hidden states averaged over the real tokens (padding left out), as sentence-transformers
    pools all-MiniLM-L6-v2."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@torch.inference_mode()
def sentence_embeddings(encoder: nn.Module, tokenizer, texts: Sequence[str], max_length: int = 128,
                        batch_size: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings (sentence-transformers' pipeline for this model), fp32.

    Texts are embedded in length-sorted batches, so that a batch pads to about its own length, and returned in
    the order given.
    """
    encoder.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = np.empty((len(texts), encoder.config.hidden_size), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in chosen], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt")
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        pooled = nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)
        vectors[chosen] = pooled.float().numpy()
    return vectors


class MeanPooledClassifier(nn.Module):
    """A pretrained encoder, mean pooling over the real tokens and a linear head, trained end to end: the network
    a practitioner would put on top of a sentence-embedding model, in the shape ``Trainer`` expects (it takes the
    labels and returns the loss)."""

    def __init__(self, backbone: str, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = AutoModel.from_pretrained(backbone)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                **_: Any) -> SequenceClassifierOutput:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.head(self.dropout(mean_pool(hidden, attention_mask)))
        # The loss in fp32 even under bf16 autocast: a bf16 log-softmax loses the small differences late in training.
        loss = None if labels is None else nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def trainer_scores(output: PredictionOutput, classes: list[str]) -> dict[str, float]:
    """Held-out scores of ``Trainer.predict``. With length-grouped batches the Trainer also reorders the texts it
    predicts, so its predictions are matched with the labels it returns, not with the order of the texts."""
    return classification_metrics(output.label_ids, output.predictions.argmax(-1), len(classes))


def encoder(tokenizer, classes: list[str], max_length: int = 128) -> Callable[[TextExamples], list[dict[str, Any]]]:
    index = {name: i for i, name in enumerate(classes)}

    def encode(part: TextExamples) -> list[dict[str, Any]]:
        ids = tokenizer(part.texts, truncation=True, max_length=max_length)["input_ids"]
        return [{"input_ids": row, "labels": index[y]} for row, y in zip(ids, part.labels, strict=True)]

    return encode


def cpu_arguments(output_dir: str, **recipe: Any) -> TrainingArguments:
    """Trainer's best CPU settings, with a validation pass after every epoch; ``recipe`` overrides any of them."""
    settings = {"per_device_eval_batch_size": 64, "bf16": True, "use_cpu": True, "optim": "adamw_torch_fused",
                "train_sampling_strategy": "group_by_length", "eval_strategy": "epoch", "save_strategy": "no",
                "logging_strategy": "no", "report_to": "none", "disable_tqdm": True, "seed": 42}
    return TrainingArguments(output_dir=output_dir, **(settings | recipe))


def search_space(trial: optuna.Trial) -> dict[str, Any]:
    return {"learning_rate": trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True),
            "num_train_epochs": trial.suggest_int("num_train_epochs", 1, 5),
            "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", [8, 16, 32]),
            "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.1)}


def validation_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


class SearchClock(TrainerCallback):
    """Notes when each trial of the search ends, and keeps the model of the best finished trial.

    The Trainer drops each trial's model once the trial is over, so the best one is held here as it ends (Optuna's
    best trial is the first with the highest objective among trials that were not pruned). It is read from the
    Trainer: the ``model`` the Trainer passes to callbacks is the one ``model_init`` built when the Trainer was
    created, not the trial's.
    """

    def __init__(self, prefix: str = "  "):
        self.prefix = prefix  # printed before each trial's line
        self.started = time.perf_counter()
        self.trainer: Trainer | None = None
        self.trial: optuna.Trial | None = None  # the running trial, seen when the Trainer asks for its parameters
        self.last_accuracy: float | None = None
        self.ended: dict[int, float] = {}
        self.best_trial: int | None = None
        self.best_accuracy = -1.0
        self.best_model: torch.nn.Module | None = None
        self.timeout: float | None = None  # Optuna's timeout, once the search has started

    def space(self, trial: optuna.Trial) -> dict[str, Any]:
        self.trial = trial
        return search_space(trial)

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_accuracy = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.last_accuracy = metrics["eval_accuracy"]

    def on_train_end(self, args, state, control, **kwargs):
        # The Trainer also ends training here when Optuna prunes the trial, right after the pruner said so.
        seconds = time.perf_counter() - self.started
        self.ended[self.trial.number] = seconds
        pruned = self.trial.should_prune()
        if not pruned and self.last_accuracy is not None and self.last_accuracy > self.best_accuracy:
            self.best_trial, self.best_accuracy = self.trial.number, self.last_accuracy
            self.best_model = self.trainer.model
        params = self.trial.params
        print(f"{self.prefix}search trial {self.trial.number} (lr {params['learning_rate']:.1e}, "
              f"{params['num_train_epochs']} epochs, batch {params['per_device_train_batch_size']}, "
              f"weight decay {params['weight_decay']:.3f}) {'pruned' if pruned else 'ended'} at {seconds:.0f}s: "
              f"validation accuracy {self.last_accuracy:.4f}", flush=True)

    def trials(self) -> list[dict[str, Any]]:
        return [trial_record(trial, self.ended.get(trial.number)) for trial in self.trial.study.trials]


def trial_record(trial: optuna.trial.FrozenTrial, ended: float | None) -> dict[str, Any]:
    """One trial of the search: its parameters, its last validation accuracy and when it ended."""
    last = list(trial.intermediate_values.values())[-1] if trial.intermediate_values else None
    return {"trial": trial.number, "state": trial.state.name.lower(), "params": trial.params,
            "validation_accuracy": trial.value if trial.value is not None else last,
            "seconds": round(ended, 1) if ended is not None else None}


def optuna_search(clock: SearchClock, model_init: Callable[..., nn.Module], tokenizer, train: list[dict[str, Any]],
                  val: list[dict[str, Any]], output_dir: str, budget_seconds: float, n_trials: int,
                  **arguments: Any) -> BestRun:
    """``Trainer.hyperparameter_search(backend="optuna")`` (TPE, seeded) over ``search_space`` until the budget,
    counted from ``clock.started``, is spent; the objective is the validation accuracy after each trial's last epoch.

    Optuna's ``timeout`` is the budget less the time spent before the search starts, and Optuna checks it only
    between trials, so the last trial may overrun. ``arguments`` override ``cpu_arguments``. The model of the best
    finished trial is ``clock.best_model`` afterwards.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the clock prints one line per trial instead
    transformers.logging.set_verbosity_error()  # the model is loaded once per trial: one load report is enough
    transformers.logging.disable_progress_bar()
    trainer = Trainer(model_init=model_init, args=cpu_arguments(output_dir, **arguments), train_dataset=train,
                      eval_dataset=val, data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                      compute_metrics=validation_accuracy, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # the clock prints one line per trial instead of one per epoch
    clock.trainer = trainer
    clock.timeout = max(budget_seconds - (time.perf_counter() - clock.started), 1.0)
    best = trainer.hyperparameter_search(hp_space=clock.space, compute_objective=lambda m: m["eval_accuracy"],
                                         n_trials=n_trials, direction="maximize", backend="optuna",
                                         timeout=clock.timeout, sampler=optuna.samplers.TPESampler(seed=0))
    if int(best.run_id) != clock.best_trial:
        raise RuntimeError(f"Optuna's best trial is {best.run_id}, but the model kept is trial {clock.best_trial}")
    return best
