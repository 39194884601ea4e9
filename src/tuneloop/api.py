"""The Python API: fit, evaluate, predict, runs and load_run, composed from the modules below it.

Every function checks all of its input (data files, recipe) before it touches the workspace, so bad
input leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import shutil
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop.config import LOWER_IS_BETTER, PRECISIONS, Recipe
from tuneloop.data.feature_cache import FeatureCache
from tuneloop.data.files import read_table, write_table
from tuneloop.data.images import ImageExamples, Pixels, load_image_examples
from tuneloop.data.tabular import TableExamples, load_table_examples
from tuneloop.data.text import (
    TextExamples,
    check_validation_labels,
    load_text_examples,
)
from tuneloop.errors import ConfigError, DataError, ModelError, RunNotFoundError, TuneloopError
from tuneloop.models import get_adapter
from tuneloop.models.ensemble import is_ensemble, member_adapter, write_ensemble
from tuneloop.models.hf_text import ADAPTER_FILE
from tuneloop.models.quantize import (
    MIN_AGREEMENT,
    agreement,
    agreement_sample,
    int8_is_the_faster_match,
    quantize_int8,
)
from tuneloop.store.atomic import write_dir_atomic
from tuneloop.store.workspace import RunRecord, Workspace
from tuneloop.tasks import LABELS_FILE, modality_of, saved_classes, training_precision
from tuneloop.tasks.image import ImageTask, resized
from tuneloop.tasks.table import TableTask, features_of
from tuneloop.tasks.text import TextTask
from tuneloop.training.checkpoint import EpochCheckpoint
from tuneloop.training.device import bf16_is_fast, pick_device, resolve_precision
from tuneloop.training.loop import Callback, EpochRecord, predict_outputs, predict_probabilities, train
from tuneloop.training.loop import evaluate as evaluate_model
from tuneloop.training.metrics import classification_metrics, confusion_matrix, roc_auc
from tuneloop.training.objective import Regression, regression_metrics

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"
INFERENCE_PRECISIONS = (*PRECISIONS, "int8")  # int8: dynamically quantized linear layers, on the CPU
# Fewer texts than this: measuring int8 against fp32 (256 sampled texts in each) costs more than int8 can save.
# On a 2-core AVX2 CPU a MiniLM head's int8 took 0.72x fp32's time (and agreed on 94.5%: fp32 was kept), so
# the measurement repays itself from a few thousand texts.
AUTO_INT8_MIN_TEXTS = 5000


@dataclass(frozen=True)
class Predictions:
    """A classifier's labels and class probabilities, or a regressor's ``values`` (labels and classes empty)."""

    labels: list[str]
    probabilities: np.ndarray  # examples x classes
    classes: list[str]
    agreement_with_fp32: float | None = None  # int8 only: share of sampled labels that fp32 predicts too
    values: np.ndarray | None = None  # regression: the predicted targets, in their own units
    precision: str | None = None  # where "auto" was asked for texts: what it chose, and why
    precision_reason: str | None = None


@dataclass(frozen=True)
class EvaluationReport:
    metrics: dict[str, float]  # accuracy and macro-F1, or for a regressor MAE, RMSE and R²
    confusion: np.ndarray | None  # rows: true class, columns: predicted class; None for a regressor
    classes: list[str]
    n: int
    agreement_with_fp32: float | None = None  # int8 only, as in Predictions

    def to_dict(self) -> dict[str, Any]:
        report: dict[str, Any] = {"n": self.n, "metrics": self.metrics}
        if self.confusion is not None:
            report.update(classes=self.classes, confusion_matrix=self.confusion.tolist())
        if self.agreement_with_fp32 is not None:
            report["agreement_with_fp32"] = self.agreement_with_fp32
        return report


@dataclass
class Run:
    """A finished run: its id, model folder, recipe and metrics; ``predict`` and ``evaluate`` load the model."""

    id: str
    path: Path
    recipe: Recipe
    metrics: dict[str, Any]
    classes: list[str]
    history: list[dict[str, float]] = field(default_factory=list)
    _loaded: tuple[torch.nn.Module, Any] | None = field(default=None, repr=False)
    _int8: torch.nn.Module | None = field(default=None, repr=False)
    _int8_agreement: float | None = field(default=None, repr=False)
    _auto_precision: tuple[str, str] | None = field(default=None, repr=False)

    @classmethod
    def from_dir(cls, path: Path, run_id: str | None = None, history: list | None = None) -> Run:
        if not (path / ADAPTER_FILE).exists():
            raise ModelError(f"{path}: not a tuneloop model folder (no {ADAPTER_FILE}).")
        recipe = Recipe.from_yaml((path / RECIPE_FILE).read_text())
        metrics = json.loads((path / METRICS_FILE).read_text())
        classes = json.loads((path / LABELS_FILE).read_text())
        return cls(run_id or path.name, path, recipe, metrics, classes, history or [])

    @functools.cached_property
    def adapter(self) -> str:
        """The kind of model this run is: 'hf_text' (texts), 'tabular_mlp' (table rows) or 'image_net' (for
        an ensemble, its members' kind)."""
        return member_adapter(self.path)

    @property
    def is_ensemble(self) -> bool:
        return is_ensemble(self.path)

    def model(self) -> tuple[torch.nn.Module, Any]:
        """The network and its preprocessor (a tokenizer, or a table's fitted preprocessing)."""
        if self._loaded is None:
            saved_by = "ensemble" if self.is_ensemble else self.adapter
            self._loaded = get_adapter(saved_by).load(str(self.path))
        return self._loaded

    def int8_model(self) -> torch.nn.Module:
        """The model with int8 linear layers, built on first use; the CPU only (ModelError on a GPU)."""
        if self._int8 is None:
            model = self.model()[0]
            if getattr(model, "uses_lora", False):  # fresh from training, adapters apart: the saved one is merged
                model = get_adapter("ensemble" if self.is_ensemble else "hf_text").load(str(self.path))[0]
            self._int8 = quantize_int8(model, pick_device())
        return self._int8

    def predict_texts(self, texts: Sequence[str], precision: str = "auto") -> Predictions:
        """Labels and class probabilities; with precision 'int8' also how often its labels agree with fp32."""
        if precision not in INFERENCE_PRECISIONS:
            raise ConfigError([f"The 'precision' parameter must be one of {', '.join(INFERENCE_PRECISIONS)}. "
                               f"Got {precision!r} instead."])
        texts = list(texts)
        if self.adapter != "hf_text":
            raise ConfigError([f"run {self.id} is a {self.adapter} model, not a text classifier: predict a data "
                               "file or folder with it."])
        model, tokenizer = self.model()
        encoded = get_adapter("hf_text").encode(tokenizer, texts, None, self.recipe)
        if precision == "int8":
            probabilities = predict_probabilities(self.int8_model(), encoded, torch.device("cpu"), "fp32")
            if self._int8_agreement is None:
                self._int8_agreement = self._int8_check(texts, probabilities)
            return Predictions([self.classes[i] for i in probabilities.argmax(1)], probabilities, self.classes,
                               self._int8_agreement)
        device = pick_device()
        probabilities = predict_probabilities(model, encoded, device, resolve_precision(precision, device))
        return Predictions([self.classes[i] for i in probabilities.argmax(1)], probabilities, self.classes)

    def _int8_check(self, texts: list[str], int8_probabilities: np.ndarray) -> float:
        """How often int8 and fp32 pick the same label, on a sample of the first texts predicted with int8;
        a warning where it is below MIN_AGREEMENT. Once per run: the quantized weights do not change."""
        model, tokenizer = self.model()
        sample = agreement_sample(len(texts))
        encoded = get_adapter("hf_text").encode(tokenizer, [texts[i] for i in sample], None, self.recipe)
        reference = predict_probabilities(model, encoded, torch.device("cpu"), "fp32")
        share = agreement(reference, int8_probabilities[sample])
        if share < MIN_AGREEMENT:
            warnings.warn(f"int8 predictions agree with fp32 on {share:.1%} of {len(sample)} sampled texts (below "
                          f"{MIN_AGREEMENT:.0%}); predict with precision 'fp32' or 'bf16' where labels matter.",
                          stacklevel=3)
        return share

    def predict(self, data: str | os.PathLike | Sequence[str], *, text_col: str | None = None,
                image_col: str | None = None, precision: str = "auto") -> Predictions:
        """Predict labels for a list of texts, or for the texts, table rows or images of a data source."""
        if self.adapter == "image_net":
            return self.predict_images(self.read_images(data, labelled=False, image_col=image_col), precision)
        if self.adapter == "tabular_mlp":
            if not isinstance(data, (str, os.PathLike, TableExamples)):
                raise ConfigError([f"run {self.id} classifies table rows: give it a data file."])
            rows = data if isinstance(data, TableExamples) else load_table_examples(data, labelled=False)
            return self.predict_rows(rows, precision)
        if isinstance(data, (str, os.PathLike)):
            data = load_text_examples(data, text_col, labelled=False).texts
        if precision != "auto":
            return self.predict_texts(data, precision)
        texts = list(data)
        chosen, why = self.inference_precision(texts)
        return dataclasses.replace(self.predict_texts(texts, chosen), precision=chosen, precision_reason=why)

    def inference_precision(self, texts: Sequence[str]) -> tuple[str, str]:
        """What "auto" predicts ``texts`` in, and why. Where the device computes bf16 natively, bf16 (a GPU
        without it: fp32). On a CPU without it, for at least AUTO_INT8_MIN_TEXTS texts, int8 where on a sample
        its labels agree with fp32's on at least MIN_AGREEMENT and it runs faster, else fp32; measured once
        per run (the weights do not change)."""
        device = pick_device()
        if device.type != "cpu" or bf16_is_fast(device):
            chosen = resolve_precision("auto", device)
            return chosen, f"{chosen}, what 'auto' means on this {device.type.upper()}"
        if len(texts) < AUTO_INT8_MIN_TEXTS:
            return "fp32", (f"fp32: this CPU has no native bf16, and {len(texts)} texts are too few to repay "
                            f"measuring int8 against fp32 (from {AUTO_INT8_MIN_TEXTS})")
        if self._auto_precision is None:
            self._auto_precision = self._measure_int8(texts)
        return self._auto_precision

    def _measure_int8(self, texts: list[str]) -> tuple[str, str]:
        """fp32 and int8 on the same sample of ``texts``: their agreement and their seconds, each after a warm-up."""
        model, tokenizer = self.model()
        sample = agreement_sample(len(texts))
        encode = get_adapter("hf_text").encode
        encoded = encode(tokenizer, [texts[i] for i in sample], None, self.recipe)
        warm_up = encode(tokenizer, [texts[i] for i in sample[:8]], None, self.recipe)
        cpu = torch.device("cpu")
        seconds, outputs = {}, {}
        for name, network in (("fp32", model), ("int8", self.int8_model())):
            predict_probabilities(network, warm_up, cpu, "fp32")
            started = time.perf_counter()
            outputs[name] = predict_probabilities(network, encoded, cpu, "fp32")
            seconds[name] = time.perf_counter() - started
        share = agreement(outputs["fp32"], outputs["int8"])
        self._int8_agreement = share
        measured = (f"on {len(sample)} sampled texts int8's labels agree with fp32's on {share:.1%} and it took "
                    f"{seconds['int8'] / seconds['fp32']:.2f}x fp32's time")
        if int8_is_the_faster_match(share, seconds["fp32"], seconds["int8"]):
            return "int8", f"int8: this CPU has no native bf16; {measured}"
        return "fp32", f"fp32: this CPU has no native bf16; {measured} (int8 needs {MIN_AGREEMENT:.0%} and less time)"

    def read_images(self, data: Any, *, labelled: bool, image_col: str | None = None,
                    label_col: str | None = None) -> ImageExamples:
        """Images of a folder or a table of paths, resized and converted as this run's training images were."""
        if isinstance(data, ImageExamples):
            return data
        if not isinstance(data, (str, os.PathLike)):
            raise ConfigError([f"run {self.id} classifies images: give it a folder of images or a table of paths."])
        _, preprocessing = self.model()
        return load_image_examples(data, size=preprocessing.size, channels=preprocessing.channels,
                                   labelled=labelled, path_col=image_col, label_col=label_col)

    def predict_images(self, images: ImageExamples, precision: str = "auto") -> Predictions:
        """Labels and class probabilities for images already read at this run's size."""
        if precision not in PRECISIONS:
            raise ConfigError([f"The 'precision' parameter of an image model must be one of {', '.join(PRECISIONS)}. "
                               f"Got {precision!r} instead."])
        model, preprocessing = self.model()
        images = resized(images, preprocessing.size)  # examples made in memory at another size
        device = pick_device()
        probabilities = predict_probabilities(model, Pixels(images.pixels, None), device,
                                              resolve_precision(precision, device))
        return Predictions([self.classes[i] for i in probabilities.argmax(1)], probabilities, self.classes)

    def predict_rows(self, rows: TableExamples, precision: str = "auto") -> Predictions:
        """Labels and class probabilities for table rows, preprocessed as the training rows were."""
        if precision not in PRECISIONS:
            raise ConfigError([f"The 'precision' parameter of a table model must be one of {', '.join(PRECISIONS)}. "
                               f"Got {precision!r} instead."])
        model, preprocessing = self.model()
        features = features_of(TableExamples(rows.columns, None, rows.locations, rows.source), preprocessing)
        device = pick_device()
        precision = resolve_precision(precision, device)
        if preprocessing.target.task == "regression":
            standardized = predict_outputs(model, features, device, precision, Regression())[:, 0]
            return Predictions([], np.zeros((len(standardized), 0), np.float32), [],
                               values=preprocessing.target.inverse(standardized))
        probabilities = predict_probabilities(model, features, device, precision)
        return Predictions([self.classes[i] for i in probabilities.argmax(1)], probabilities, self.classes)

    def evaluate(self, data: Any, *, text_col: str | None = None, label_col: str | None = None,
                 image_col: str | None = None, precision: str = "auto") -> EvaluationReport:
        if self.adapter == "image_net":
            images = self.read_images(data, labelled=True, image_col=image_col, label_col=label_col)
            check_validation_labels(images, self.classes)
            index = {name: i for i, name in enumerate(self.classes)}
            true = np.array([index[label] for label in images.labels])
            predictions = self.predict_images(images, precision)
        elif self.adapter == "tabular_mlp":
            rows = load_table_examples(data, label_col)
            _, preprocessing = self.model()
            true = preprocessing.target.encode(rows)  # a class unseen in training is an error naming it
            predictions = self.predict_rows(rows, precision)
            if predictions.values is not None:
                target = preprocessing.target
                scores = regression_metrics(true=target.inverse(true), predicted=predictions.values)
                return EvaluationReport(scores, None, [], len(true))
        else:
            examples = load_text_examples(data, text_col, label_col)
            check_validation_labels(examples, self.classes)
            predictions = self.predict_texts(examples.texts, precision)
            index = {name: i for i, name in enumerate(self.classes)}
            true = np.array([index[label] for label in examples.labels])
        predicted = predictions.probabilities.argmax(1)
        k = len(self.classes)
        metrics: dict[str, Any] = classification_metrics(true, predicted, k)
        area = roc_auc(true, predictions.probabilities)
        if area is not None:
            metrics["roc_auc"] = area
        return EvaluationReport(metrics, confusion_matrix(true, predicted, k), self.classes, len(true),
                                predictions.agreement_with_fp32)


class _RecordEpochs(Callback):
    main_phase_only = True

    def __init__(self, workspace: Workspace, run_id: str):
        self.workspace, self.run_id = workspace, run_id

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None:
        if math.isfinite(record.val_loss):  # a final fit on every labelled example has no validation to record
            self.workspace.record_epoch(self.run_id, record.__dict__)

    def on_resume(self, history: list[EpochRecord]) -> None:
        for record in history:
            self.workspace.record_epoch(self.run_id, record.__dict__)


def option_problems(recipe: Recipe, val_fraction: float) -> list[str]:
    problems = recipe.problems()
    if not (isinstance(val_fraction, (int, float)) and 0 < val_fraction < 1):
        problems.append(f"The 'val_fraction' parameter must be a float in the range (0, 1). Got {val_fraction!r} "
                        "instead.")
    return problems


def check_options(recipe: Recipe, val_fraction: float) -> None:
    problems = option_problems(recipe, val_fraction)
    if problems:
        raise ConfigError(problems)


def train_run(store: Workspace, task: TextTask | TableTask, recipe: Recipe, callbacks: Sequence[Callback] = (),
              checkpoint: EpochCheckpoint | None = None, *, cache_features: bool = True,
              checkpoint_for: Callable[[str], EpochCheckpoint] | None = None,
              resumes: str | None = None) -> tuple[Run, Any]:
    """Train one run of ``recipe`` on ``task``, recorded in ``store``; returns the run and the TrainResult.
    Every finished epoch is saved in ``checkpoint`` (or in ``checkpoint_for(run id)``), and training continues
    from there where an epoch is saved; ``resumes`` names the interrupted run it continues, for the record.

    The best epoch's model is saved as the run's artifact folder, except for a run that a callback stopped
    for pruning: that one is recorded with its metrics and without a model (disk stays bounded).
    """
    recipe = recipe.for_objective(task.objective.name)  # the run records its concrete metric
    device = pick_device()
    precision = training_precision(task, recipe.precision, device, recipe)
    prepared = _seeded_prepare(task, recipe, device, precision, cache_features)
    adapter = get_adapter(task.adapter_name)
    run_id = store.start_run(task=task.kind, adapter=adapter.name, backbone=task.backbone,
                             train_source=task.train.source, val_source=task.val.source,
                             train_fingerprint=task.train.fingerprint(),
                             val_fingerprint=task.val.fingerprint(), n_train=len(task.train), n_val=len(task.val),
                             recipe=recipe.to_dict(), data_options=getattr(task, "data_options", None))
    if checkpoint is None and checkpoint_for is not None:
        checkpoint = checkpoint_for(run_id)
    try:
        prepared, phase_seconds = _first_phase(prepared, device, precision, callbacks, checkpoint)
        network, trainable = prepared.network, prepared.trainable
        train_set, val_set = prepared.train_set, prepared.val_set
        result = train(trainable, train_set, val_set, recipe, device, precision,
                       [*callbacks, _RecordEpochs(store, run_id)], checkpoint, task.objective)
        if not result.history:
            raise ModelError(f"Training diverged in the first epoch (the loss became NaN or infinite) at learning "
                             f"rate {recipe.learning_rate}. Try a lower --learning-rate.")
        if result.best_val_predictions is None:  # resumed past its best epoch: predict again, with its weights
            result.best_val_predictions = predict_outputs(trainable, val_set, device, precision, task.objective)
        best = result.best
        metrics = {**{f"val_{name}": best.metric(name) for name in task.objective.metrics},
                   "val_loss": best.val_loss,
                   "train_loss": best.train_loss, "best_epoch": result.best_epoch, "epochs_run": len(result.history),
                   "stopped_early": result.stopped_early, "stopped_by": result.stopped_by,
                   "resumed_from_epoch": result.resumed_from_epoch, **({"resumes_run": resumes} if resumes else {}),
                   "cached_inputs": prepared.cached, "not_cached": prepared.not_cached,
                   "diverged": result.diverged, "seconds": round(result.seconds + phase_seconds, 3),
                   "pairs_seconds": round(phase_seconds, 3), "precision": precision,
                   "device": device.type, **_baseline(task, val_set), **_val_roc_auc(task, result, val_set),
                   "train_samples_per_s": float(np.mean([e.train_samples_per_s for e in result.history]))}
        if result.stopped_by == "pruned":
            store.fail_run(run_id, f"stopped: {result.stopped_by}", status="pruned", metrics=metrics)
            return Run(run_id, store.artifact_dir(run_id), recipe, metrics, task.classes, store.epochs(run_id)), result

        _save_model(store, run_id, adapter, network, prepared.preprocessor, task.classes, recipe, metrics)
        store.complete_run(run_id, metrics, result.best_epoch, result.seconds)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        store.fail_run(run_id, "".join(traceback.format_exception_only(exc)).strip(), status=status)
        raise
    run = Run(run_id, store.artifact_dir(run_id), recipe, metrics, task.classes, store.epochs(run_id),
              (network.cpu().eval(), prepared.preprocessor))
    return run, result


def _seeded_prepare(task: Any, recipe: Recipe, device: torch.device, precision: str, cache_features: bool = True
                    ) -> Any:
    """``task.prepare`` for ``recipe``, its new layers' initial weights drawn from ``recipe.weights_seed`` and
    what training draws afterwards (dropout) from ``recipe.seed``."""
    torch.manual_seed(recipe.weights_seed)
    prepared = task.prepare(recipe, device, precision, cache_features=cache_features)
    if recipe.init_seed != -1:  # the weights came from init_seed; dropout and the rest of training from seed
        torch.manual_seed(recipe.seed)
    return prepared


def _first_phase(prepared: Any, device: torch.device, precision: str, callbacks: Sequence[Callback],
                 checkpoint: EpochCheckpoint | None) -> tuple[Any, float]:
    """Train a run's first phase where it has one (contrastive tuning on pairs, checkpointed apart from the
    rest); returns what the rest of the run trains, and the phase's seconds."""
    if prepared.first_phase is None:
        return prepared, 0.0
    phase = prepared.first_phase
    shown = [c for c in callbacks if not c.main_phase_only]
    part = EpochCheckpoint(checkpoint.folder / phase.name) if checkpoint is not None else None
    result = train(phase.trainable, phase.train_set, phase.val_set, phase.recipe, device, precision, shown, part,
                   phase.objective)
    if result.diverged:
        raise ModelError(f"Contrastive tuning on pairs diverged (the loss became NaN or infinite) at learning rate "
                         f"{phase.recipe.learning_rate}.")
    return phase.then(), result.seconds


@dataclass(frozen=True)
class CrossValidation:
    """A recipe scored by k-fold cross-validation over every labelled example of a task, at the one epoch that
    scores best over all folds together (each fold trains every epoch of the recipe and is validated on the
    examples it left out, so the folds' curves add up to one curve over every example)."""

    metrics: dict[str, float]  # val_<metric> and val_loss over all folds' validation examples, at best_epoch
    n: int
    k: int
    best_epoch: int
    seconds: float


def cross_validate(task: Any, recipe: Recipe, k: int, seed: int, callbacks: Sequence[Callback] = ()
                   ) -> CrossValidation | None:
    """``recipe`` trained k times on the task's pooled examples, each time validated after every epoch on the
    fold left out (None where the rarest class has too few examples for ``k`` folds). Nothing is recorded in
    a workspace: it is a measurement, not a model.

    Accuracy, MAE and the loss over all examples are the folds' values weighted by their sizes, exactly; RMSE
    is the square root of the weighted mean square; macro-F1 and R² are the weighted means of the folds'."""
    from tuneloop.tuning.selection import folds

    recipe = recipe.for_objective(task.objective.name).replace(patience=0)  # every epoch of every fold
    regression = task.objective.name == "regression"
    splits = folds(task.pool_labels(), k, seed, regression=regression)
    if not splits:
        return None
    device = pick_device()
    started = time.perf_counter()
    curves, sizes = [], []
    for train_rows, val_rows in splits:
        fold = task.fold(train_rows, val_rows)
        precision = training_precision(fold, recipe.precision, device, recipe)
        prepared = _seeded_prepare(fold, recipe, device, precision)
        prepared, _ = _first_phase(prepared, device, precision, callbacks, None)
        result = train(prepared.trainable, prepared.train_set, prepared.val_set, recipe, device, precision,
                       [c for c in callbacks if not c.main_phase_only], None, fold.objective)
        if not result.history:
            raise ModelError(f"Training diverged in a fold of cross-validation at learning rate "
                             f"{recipe.learning_rate}.")
        curves.append(result.history)
        sizes.append(len(val_rows))
    epochs = min(len(curve) for curve in curves)  # a fold that diverged late ends the common curve
    weights = np.asarray(sizes, dtype=np.float64) / sum(sizes)
    pooled = []
    for epoch in range(epochs):
        at = [curve[epoch] for curve in curves]
        point = {"val_loss": float(np.dot(weights, [r.val_loss for r in at]))}
        for name in task.objective.metrics:
            values = np.asarray([r.metric(name) for r in at], dtype=np.float64)
            point[f"val_{name}"] = (float(np.sqrt(np.dot(weights, values ** 2))) if name == "rmse"
                                    else float(np.dot(weights, values)))
        pooled.append(point)
    sign = -1.0 if recipe.metric in LOWER_IS_BETTER else 1.0
    best = max(range(epochs), key=lambda e: (sign * pooled[e][f"val_{recipe.metric}"] if recipe.metric != "loss"
                                             else -pooled[e]["val_loss"], -pooled[e]["val_loss"]))
    return CrossValidation(pooled[best], sum(sizes), len(splits), best + 1, time.perf_counter() - started)


def refit_run(store: Workspace, task: Any, recipe: Recipe, estimate: dict[str, Any],
              callbacks: Sequence[Callback] = (), checkpoint: EpochCheckpoint | None = None) -> Run:
    """``recipe`` trained on every labelled example of ``task`` (training and validation together) for its
    epochs, the last one kept: the final model of a study whose validation set was too small to keep apart.
    Nothing is left to validate it on, so its recorded scores are ``estimate``'s (val_<metric> as measured
    by cross-validation or on the validation set when the recipe was chosen; ``estimated_by`` says which)."""
    recipe = recipe.for_objective(task.objective.name)
    everything = task.fold(np.arange(len(task.train) + len(task.val)))
    device = pick_device()
    precision = training_precision(everything, recipe.precision, device, recipe)
    prepared = _seeded_prepare(everything, recipe, device, precision)
    adapter = get_adapter(everything.adapter_name)
    run_id = store.start_run(task=everything.kind, adapter=adapter.name, backbone=everything.backbone,
                             train_source=task.train.source, val_source=f"{task.val.source} (trained on too)",
                             train_fingerprint=task.train.fingerprint(),  # as read: so it can be read again
                             val_fingerprint=task.val.fingerprint(), n_train=len(everything.train), n_val=0,
                             recipe=recipe.to_dict(), data_options=getattr(task, "data_options", None))
    try:
        prepared, phase_seconds = _first_phase(prepared, device, precision, callbacks, checkpoint)
        result = train(prepared.trainable, prepared.train_set, None, recipe, device, precision,
                       [c for c in callbacks if not c.main_phase_only], checkpoint, everything.objective)
        if not result.history:
            raise ModelError(f"Training on every labelled example diverged at learning rate {recipe.learning_rate}.")
        metrics = {**estimate, "train_loss": result.history[-1].train_loss, "best_epoch": len(result.history),
                   "epochs_run": len(result.history), "refit_on": len(everything.train),
                   "cached_inputs": prepared.cached, "seconds": round(result.seconds + phase_seconds, 3),
                   "pairs_seconds": round(phase_seconds, 3), "precision": precision, "device": device.type,
                   **_baseline(task, task.val_features if hasattr(task, "val_features") else prepared.val_set)}
        _save_model(store, run_id, adapter, prepared.network, prepared.preprocessor, everything.classes, recipe,
                    metrics)
        store.complete_run(run_id, metrics, len(result.history), metrics["seconds"])
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        store.fail_run(run_id, "".join(traceback.format_exception_only(exc)).strip(), status=status)
        raise
    return Run(run_id, store.artifact_dir(run_id), recipe, metrics, everything.classes, [],
               (prepared.network.cpu().eval(), prepared.preprocessor))


def _save_model(store: Workspace, run_id: str, adapter: Any, network: torch.nn.Module, preprocessor: Any,
                classes: list[str], recipe: Recipe, metrics: dict[str, Any]) -> None:
    """The run's model folder, written whole: weights and preprocessing, classes, recipe and metrics."""

    def fill(folder: Path) -> None:
        adapter.save(network, preprocessor, str(folder))
        (folder / LABELS_FILE).write_text(json.dumps(classes, indent=2))
        (folder / RECIPE_FILE).write_text(recipe.to_yaml())
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2))

    write_dir_atomic(store.artifact_dir(run_id), fill)


def ensemble_run(store: Workspace, task: Any, run_ids: Sequence[str], estimate: dict[str, Any]) -> Run:
    """The models of ``run_ids`` (final fits on every labelled example of ``task``, the lead first) saved as one
    run that predicts their average: class probabilities, or a regressor's values. Nothing is left to score it
    on, so its recorded scores are ``estimate``'s (its lead's, as the study chose it)."""
    members = [Run.from_dir(store.artifact_dir(run_id), run_id) for run_id in run_ids]
    lead = members[0]
    everything = task.fold(np.arange(len(task.train) + len(task.val)))
    metrics = {**estimate, "ensemble_of": list(run_ids), "refit_on": len(everything.train), "seconds": 0.0}
    average = "values" if task.objective.name == "regression" else "probabilities"
    run_id = store.start_run(task=everything.kind, adapter=lead.adapter, backbone=everything.backbone,
                             train_source=task.train.source, val_source=f"{task.val.source} (trained on too)",
                             train_fingerprint=task.train.fingerprint(),  # as read: so it can be read again
                             val_fingerprint=task.val.fingerprint(), n_train=len(everything.train), n_val=0,
                             recipe=lead.recipe.to_dict(), data_options=getattr(task, "data_options", None))

    def fill(folder: Path) -> None:
        write_ensemble(folder, [member.path for member in members], average)
        (folder / LABELS_FILE).write_text(json.dumps(lead.classes, indent=2))
        (folder / RECIPE_FILE).write_text(lead.recipe.to_yaml())
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2))

    try:
        write_dir_atomic(store.artifact_dir(run_id), fill)
        store.complete_run(run_id, metrics, None, 0.0)
    except BaseException as exc:
        store.fail_run(run_id, "".join(traceback.format_exception_only(exc)).strip())
        raise
    return Run(run_id, store.artifact_dir(run_id), lead.recipe, metrics, lead.classes, [])


def soup_run(store: Workspace, task: Any, run_ids: Sequence[str], recipe: Recipe) -> tuple[Run, np.ndarray]:
    """The uniform weight average of the models of ``run_ids`` (a model soup, Wortsman et al. 2022: runs
    fine-tuned from the same weights average into one model, often better than each), scored on the task's
    validation data and saved as a run of its own. Returns the run and its validation predictions."""
    recipe = recipe.for_objective(task.objective.name)
    members = [Run.from_dir(store.artifact_dir(run_id), run_id) for run_id in run_ids]
    adapter = get_adapter(members[0].adapter)
    network, preprocessor = adapter.load(str(members[0].path))
    states = [network.state_dict()] + [adapter.load(str(m.path))[0].state_dict() for m in members[1:]]
    averaged = {name: torch.stack([s[name].float() for s in states]).mean(0).to(tensor.dtype)
                if tensor.is_floating_point() else tensor for name, tensor in states[0].items()}
    network.load_state_dict(averaged)
    device = pick_device()
    precision = training_precision(task, recipe.precision, device, recipe)
    started = time.perf_counter()
    # The validation examples as the saved model reads them (token ids, pixels, rows): nothing cached.
    val_set = task.prepare(recipe.replace(lora_rank=0, contrastive=0), device, precision,
                           cache_features=False).val_set
    scored = evaluate_model(network, val_set, device, precision, task.objective)
    metrics = {**{f"val_{name}": value for name, value in scored.metrics.items()}, "val_loss": scored.loss,
               "soup_of": list(run_ids), "seconds": round(time.perf_counter() - started, 3),
               "precision": precision, "device": device.type, **_baseline(task, val_set)}
    if task.objective.name == "classification":
        area = roc_auc(np.asarray(val_set.label_ids), scored.probabilities)
        metrics.update({} if area is None else {"val_roc_auc": area})
    run_id = store.start_run(task=task.kind, adapter=adapter.name, backbone=task.backbone,
                             train_source=task.train.source, val_source=task.val.source,
                             train_fingerprint=task.train.fingerprint(), val_fingerprint=task.val.fingerprint(),
                             n_train=len(task.train), n_val=len(val_set), recipe=recipe.to_dict(),
                             data_options=getattr(task, "data_options", None))
    try:
        _save_model(store, run_id, adapter, network, preprocessor, task.classes, recipe, metrics)
        store.complete_run(run_id, metrics, None, metrics["seconds"])
    except BaseException as exc:
        store.fail_run(run_id, "".join(traceback.format_exception_only(exc)).strip())
        raise
    run = Run(run_id, store.artifact_dir(run_id), recipe, metrics, task.classes, [],
              (network.cpu().eval(), preprocessor))
    return run, scored.probabilities


def fit(data: Any, val: Any = None, *, task: str = "auto", text_col: str | None = None,
        label_col: str | None = None, image_col: str | None = None, image_size: int | None = None,
        model: str | None = None, recipe: Recipe | None = None, workspace: str | os.PathLike | None = None,
        val_fraction: float = 0.2, callbacks: Sequence[Callback] = (), **recipe_changes: Any) -> Run:
    """Train a model on ``data`` and save it as a run in the workspace: a fine-tuned text encoder for texts,
    an MLP for table rows (a classifier, or a regressor of a numeric target), an image network for images
    (``task`` "text", "tabular" or "image"; "auto" tells by the data: a folder is images).

    For images, ``model`` is efficientnet-lite0 (the default, ImageNet weights), small-cnn (from scratch)
    or a previous image run's folder (fine-tuned, with a new head for other classes); ``image_size`` is the
    side images are resized to; ``image_col`` names a table's column of image paths.

    ``val`` is a separate validation file; without it a stratified ``val_fraction`` of ``data`` is held out.
    ``label_col`` names the label (or, for tables, target) column. Recipe values come from ``recipe`` (by
    default, the kind of data's own defaults: an MLP and a small CNN from scratch train longer and faster than
    a fine-tune) and then ``recipe_changes`` (e.g. ``epochs=2``).
    """
    check_options((recipe or Recipe()).replace(**recipe_changes), val_fraction)
    seed = recipe_changes.get("seed", (recipe or Recipe()).seed)
    task = load_task(data, val, task=task, text_col=text_col, label_col=label_col, model=model,
                     val_fraction=val_fraction, seed=seed, image_col=image_col, image_size=image_size)
    base = recipe if recipe is not None else task.default_recipe(Recipe())
    recipe = base.replace(**recipe_changes).for_objective(task.objective.name)
    # Everything is checked: only now does the workspace get written. Every finished epoch is saved until the
    # run is done, so that a killed fit continues with resume_fit (tuneloop fit --resume RUN).
    with Workspace.open(workspace, create=True) as store:
        run, _ = train_run(store, task, recipe, callbacks, checkpoint_for=lambda run_id: _fit_checkpoint(store, run_id))
        _fit_checkpoint(store, run.id).clear()
    return run


def resume_fit(run: str, *, workspace: str | os.PathLike | None = None, callbacks: Sequence[Callback] = ()) -> Run:
    """Continue a fit that was killed (or failed) from its last finished epoch, on the same data read the same
    way and the same recipe: a new run, which ends as the interrupted one would have (same batches, same
    random draws). ``run`` is the interrupted run's id or a unique prefix of it."""
    with Workspace.open(workspace) as store:
        record = _interrupted_run(store, run)
        checkpoint = _fit_checkpoint(store, record.id)
        if not checkpoint.saved():
            raise TuneloopError(f"run {record.id} saved no finished epoch to continue from (it stopped in its first "
                                "epoch, or it was not a fit): run the fit again.")
        task = task_of_run(record)
        if hasattr(task, "features"):
            task.features = FeatureCache(store.root / "cache")
        resumed, _ = train_run(store, task, Recipe.from_dict(record.recipe), callbacks, checkpoint, resumes=record.id)
        checkpoint.clear()
    return resumed


def _fit_checkpoint(store: Workspace, run_id: str) -> EpochCheckpoint:
    return EpochCheckpoint(store.root / "checkpoints" / "fit" / run_id)


def _interrupted_run(store: Workspace, reference: str) -> RunRecord:
    """The run ``reference`` names (an id or a unique prefix), which must have ended without its model."""
    matches = [r for r in store.runs() if r.id == reference] or [r for r in store.runs() if r.id.startswith(reference)]
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        raise RunNotFoundError(f"{store.root}: {found} named '{reference}' here; 'tuneloop runs' lists them.")
    record = matches[0]
    if record.status == "completed":
        raise TuneloopError(f"run {record.id} is completed: there is nothing to resume.")
    if record.status == "running":
        raise TuneloopError(f"run {record.id} is still running in another process.")
    return record


def task_of_run(record: RunRecord, data: Any = None, val: Any = None) -> Any:
    """The task a run trained on: its data read again as the run read it (the options it recorded), or
    ``data`` and ``val`` where given, checked against the fingerprints it recorded."""
    options = record.data_options
    if data is None and options is None:
        raise ConfigError([f"run {record.id} does not record how its data was read (an older tuneloop trained it):"
                           " give its training data with --data (and --val)."])
    options = options or {}
    source = data if data is not None else record.train_source
    held = val if val is not None else (record.val_source if options.get("val_given") else None)
    if data is None and not Path(record.train_source).exists():
        raise DataError(f"run {record.id} was trained on {record.train_source}, which is not here to read again: "
                        "give its training data with --data (and --val).")
    model = record.backbone if record.adapter != "tabular_mlp" else None
    task = load_task(source, held, task=options.get("task", "auto"), text_col=options.get("text_col"),
                     label_col=options.get("label_col"), model=model, val_fraction=options.get("val_fraction", 0.2),
                     seed=options.get("seed", record.recipe.get("seed", 0)), image_col=options.get("image_col"),
                     image_size=options.get("image_size"))
    if (task.train.fingerprint(), task.val.fingerprint()) != (record.train_fingerprint, record.val_fingerprint):
        if data is None:
            raise DataError(f"{record.train_source} has changed since run {record.id} read it (its fingerprint "
                            "differs): give the data it was trained on with --data (and --val).")
        raise DataError(f"{getattr(data, 'source', data)}: not the data run {record.id} was trained and validated "
                        "on (the fingerprints differ).")
    return task


def load_task(data: Any, val: Any, *, task: str, text_col: str | None, label_col: str | None, model: str | None,
              val_fraction: float, seed: int, image_col: str | None = None, image_size: int | None = None,
              keep_classes: bool = False) -> TextTask | TableTask | ImageTask:
    """The checked task for ``data``; every check that can fail on bad input runs here, before any write.

    ``keep_classes``: ``model`` is a saved run being updated; its classes stay, in their order, and the data's
    new classes are added after them (its head grows)."""
    modality = modality_of(data, task, text_col, image_col)
    if modality == "image":
        if image_size is not None and not (isinstance(image_size, int) and 8 <= image_size <= 1024):
            raise ConfigError([f"The 'image_size' parameter must be an int in the range [8, 1024]. "
                               f"Got {image_size!r} instead."])
        loaded = ImageTask.load(data, val, model=model, label_col=label_col, val_fraction=val_fraction, seed=seed,
                                image_size=image_size, image_col=image_col, keep_classes=keep_classes)
    elif modality == "tabular":
        if model is not None and saved_classes(model) is None:
            raise ConfigError([f"--model {model}: table rows train an MLP from scratch, or continue a saved table "
                               "run's (give its model folder); a pretrained backbone applies to texts only."])
        loaded = TableTask.load(data, val, target_col=label_col, val_fraction=val_fraction, seed=seed, model=model)
    else:
        loaded = TextTask.load(data, val, text_col=text_col, label_col=label_col, model=model,
                               val_fraction=val_fraction, seed=seed, keep_classes=keep_classes)
        get_adapter("hf_text").check_backbone(loaded.backbone)
    # How the data was read and split: recorded with each run, so its examples can be read again.
    loaded.data_options = {"task": modality, "text_col": text_col, "label_col": label_col, "image_col": image_col,
                           "image_size": image_size, "val_fraction": val_fraction, "seed": seed,
                           "val_given": val is not None}
    return loaded


def _val_roc_auc(task: Any, result: Any, val_set: Any) -> dict[str, float]:
    """A classifier's validation ROC AUC from its best epoch's predictions (where this call trained it)."""
    if task.objective.name != "classification" or result.best_val_predictions is None:
        return {}
    area = roc_auc(np.asarray(val_set.label_ids), result.best_val_predictions)
    return {} if area is None else {"val_roc_auc": area}


def _baseline(task: Any, val_set: Any) -> dict[str, float]:
    """What a model that learned nothing scores on the validation set: a classifier always answering the
    most common class, a regressor always answering the training mean (RMSE in the target's units)."""
    if task.objective.name == "regression":
        standardized = np.asarray(val_set.label_ids, dtype=np.float64)  # 0 is the training mean
        return {"mean_predictor_rmse": float(np.sqrt(np.mean(standardized ** 2))) * task.objective.scale}
    values, counts = np.unique(task.val_labels, return_counts=True)
    return {"majority_class_rate": float(counts.max() / counts.sum())}


def load_run(reference: str | os.PathLike = "latest", workspace: str | os.PathLike | None = None) -> Run:
    """A run by id, id prefix or 'latest' in the workspace, or a path to a run's model folder."""
    path = Path(reference)
    if path.is_dir() and (path / ADAPTER_FILE).exists():
        return Run.from_dir(path)
    with Workspace.open(workspace) as store:
        record = store.resolve(str(reference))
        if record.artifact is None and record.note:
            raise RunNotFoundError(f"run {record.id} has no model any more: {record.note}.")
        if record.artifact is None or not record.artifact.is_dir():
            raise RunNotFoundError(f"run {record.id}: its model folder {record.artifact} is missing.")
        return Run.from_dir(record.artifact, record.id, store.epochs(record.id))


def evaluate(run: str | Run, data: str | os.PathLike, *, text_col: str | None = None, label_col: str | None = None,
             image_col: str | None = None, workspace: str | os.PathLike | None = None,
             precision: str = "auto") -> EvaluationReport:
    run = run if isinstance(run, Run) else load_run(run, workspace)
    return run.evaluate(data, text_col=text_col, label_col=label_col, image_col=image_col, precision=precision)


def predict(run: str | Run, data: str | os.PathLike | Sequence[str], *, text_col: str | None = None,
            image_col: str | None = None, workspace: str | os.PathLike | None = None,
            precision: str = "auto") -> Predictions:
    run = run if isinstance(run, Run) else load_run(run, workspace)
    return run.predict(data, text_col=text_col, image_col=image_col, precision=precision)


def runs(workspace: str | os.PathLike | None = None) -> list[RunRecord]:
    with Workspace.open(workspace) as store:
        return store.runs()


@dataclass(frozen=True)
class Collected:
    """What ``gc`` freed: bytes by part, and how many models it removed."""

    freed: dict[str, int]
    models_removed: int


def gc(workspace: str | os.PathLike | None = None, *, keep_models: int = 3, cache_mb: float | None = None
       ) -> Collected:
    """Free the disk a workspace no longer needs: models of ended studies beyond their final model and their
    ``keep_models`` best (registered ones always stay; records stay), model folders no run points at,
    checkpoints of finished studies and completed fits, and feature-cache files beyond ``cache_mb`` megabytes
    (default $TUNELOOP_CACHE_MB or 2048), least recently used first. A running study is left alone; an
    interrupted one keeps its checkpoints, so it can still resume."""
    from tuneloop.data.feature_cache import disk_limit, trim
    from tuneloop.store.workspace import disk_bytes
    from tuneloop.tuning.study import discard_models

    if not (isinstance(keep_models, int) and keep_models >= 0):
        raise ConfigError([f"The 'keep_models' parameter must be an int >= 0. Got {keep_models!r} instead."])
    with Workspace.open(workspace) as store:
        studies = store.connection.execute("SELECT id, status FROM tuneloop_studies").fetchall()
        before = sum(1 for r in store.runs() if r.artifact is not None)
        freed = {"models": sum(discard_models(store, row["id"], keep_models) for row in studies
                               if row["status"] != "running")}
        for folder in store.orphan_folders():
            freed["models"] += disk_bytes(folder, unique_only=True)
            shutil.rmtree(folder, ignore_errors=True)
        removed = before - sum(1 for r in store.runs() if r.artifact is not None)
        finished = {row["id"] for row in studies if row["status"] == "finished"}
        ended_fits = {r.id for r in store.runs() if r.status == "completed"}
        checkpoints = store.root / "checkpoints"
        stale = [checkpoints / name for name in finished] + [checkpoints / "fit" / name for name in ended_fits]
        freed["checkpoints"] = 0
        for folder in stale:
            if folder.is_dir():
                freed["checkpoints"] += disk_bytes(folder)
                shutil.rmtree(folder, ignore_errors=True)
        limit = disk_limit() if cache_mb is None else int(max(0.0, cache_mb) * 2**20)
        freed["feature cache"] = trim(store.root / "cache", limit)
    return Collected(freed, removed)


def disk_usage(workspace: str | os.PathLike | None = None) -> dict[str, int]:
    """Bytes on disk by part of the workspace: models, feature cache, checkpoints, registry, database."""
    with Workspace.open(workspace) as store:
        return store.disk_usage()


def predict_file(run: str | Run, data: str | os.PathLike, output: str | os.PathLike, *, text_col: str | None = None,
                 image_col: str | None = None, workspace: str | os.PathLike | None = None,
                 precision: str = "auto") -> Predictions:
    """Predict the texts, table rows or images of ``data`` and write its rows (for images: each image's
    path) with the predicted label and class probabilities, or the predicted value of a regressor."""
    run = run if isinstance(run, Run) else load_run(run, workspace)
    if run.adapter == "image_net":
        images = run.read_images(data, labelled=False, image_col=image_col)
        predictions = run.predict_images(images, precision)
        columns: dict[str, list] = {"image": images.locations}
    else:
        predictions = run.predict(data, text_col=text_col, precision=precision)
        columns = dict(read_table(data).columns)
    if predictions.values is not None:
        columns["predicted_value"] = [float(v) for v in predictions.values]
        write_table(output, columns)
        return predictions
    columns["predicted_label"] = predictions.labels
    columns["probability"] = [round(float(p), 6) for p in predictions.probabilities.max(1)]
    for i, name in enumerate(predictions.classes):
        columns[f"prob_{name}"] = [round(float(p), 6) for p in predictions.probabilities[:, i]]
    write_table(output, columns)
    return predictions


DEMO_TRAIN_SIZE = 400
DEMO_VAL_SIZE = 500
DEMO_TEST_SIZE = 1000
DEMO_BUDGET = "150s"


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray, z: float = 1.96) -> tuple[float, float, float]:
    """B's accuracy minus A's on the same examples, and its ~95% interval (normal approximation on the paired
    per-example differences, each -1, 0 or 1)."""
    differences = correct_b.astype(float) - correct_a.astype(float)
    mean = float(differences.mean())
    half = z * float(differences.std(ddof=1)) / math.sqrt(len(differences)) if len(differences) > 1 else math.inf
    return mean, mean - half, mean + half


def demo(*, workspace: str | os.PathLike | None = None, train_size: int = DEMO_TRAIN_SIZE,
         val_size: int = DEMO_VAL_SIZE, test_size: int = DEMO_TEST_SIZE, budget: str = DEMO_BUDGET, seed: int = 0,
         callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """The loop on real data: a guided ``tune`` of the packaged all-MiniLM-L6-v2 on tweets of the 2016 US
    presidential candidates (who wrote it?), within ``budget``. Then, on tweets no trial saw, the final model's
    accuracy next to always answering the commonest author's and next to the study's first trial (what a user
    gets without the loop), and the final model reloaded from disk predicting the same labels."""
    from tuneloop.data.demo import disjoint_samples, election_tweets
    from tuneloop.tuning.study import discard_models

    train_examples, val_examples, test_examples = disjoint_samples(election_tweets(), (train_size, val_size,
                                                                                        test_size), seed)
    # Every trial's model stays until the first is compared with the final one on the test tweets.
    result = tune(train_examples, val_examples, budget=budget, workspace=workspace, keep_models=None,
                  callbacks=callbacks)
    if result.best_run is None:
        raise TuneloopError(f"The demo's study {result.study_id} ended ({result.stop_reason}) without a model.")
    truth = np.array(test_examples.labels)
    final_labels = result.best_run.predict_texts(test_examples.texts).labels
    reloaded = load_run(result.best_run.id, workspace).predict_texts(test_examples.texts).labels
    first = next(t for t in result.trials if t.status == "completed" and t.run_id)
    first_labels = load_run(first.run_id, workspace).predict_texts(test_examples.texts).labels
    final_correct, first_correct = np.array(final_labels) == truth, np.array(first_labels) == truth
    gain, low, high = paired_difference(first_correct, final_correct)
    with Workspace.open(workspace) as store:
        discard_models(store, result.study_id, 3)  # what tune does when it keeps its default 3 best
    counts = np.unique(truth, return_counts=True)[1]
    return {"study": result.study_id, "run": result.best_run.id, "path": str(result.best_run.path),
            "stop_reason": result.stop_reason, "choice": result.choice, "trials": result.to_dict()["trials"],
            "spent_seconds": round(result.spent_seconds, 1), "n_train": len(train_examples),
            "n_val": len(val_examples), "n_test": len(test_examples),
            "test_accuracy": float(final_correct.mean()), "majority_class_rate": float(counts.max() / len(truth)),
            "first_trial": first.number, "first_trial_test_accuracy": float(first_correct.mean()),
            "gain_over_first_trial": gain, "gain_interval": [low, high],
            "reloaded_agreement": float(np.mean(np.array(reloaded) == np.array(final_labels)))}


@dataclass
class TuneResult:
    """The end of a study: its id, every trial, the best trial's run (a model like any other), why it stopped."""

    study_id: str
    best_run: Run | None
    trials: list[Any]
    stop_reason: str
    spent_seconds: float
    seed_check: Any = None
    choice: str | None = None  # how the final model was chosen (the seed check, or cross-validation and a refit)

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study_id, "stop_reason": self.stop_reason, "spent_seconds": round(self.spent_seconds, 1),
            "choice": self.choice,
            "best_run": self.best_run.id if self.best_run else None,
            "best_metrics": self.best_run.metrics if self.best_run else None,
            "seed_check": self.seed_check.to_dict() if self.seed_check else None,
            "trials": [{"number": t.number, "kind": t.kind, "status": t.status, "run": t.run_id, "value": t.value,
                        "recipe": t.recipe.to_dict(), "reason": t.reason, "seconds": round(t.seconds, 1),
                        "parent": t.parent, "no_effect": t.no_effect or None,
                        "diagnosis": t.diagnosis.label if t.diagnosis else None,
                        "diagnosis_summary": t.diagnosis.summary if t.diagnosis else None} for t in self.trials],
        }


def tune(data: str | os.PathLike | TextExamples | TableExamples | None = None,
         val: str | os.PathLike | TextExamples | TableExamples | None = None, *, task: str = "auto",
         budget: str = "15m", strategy: str = "guided", target: float | None = None, prune: str = "median",
         text_col: str | None = None, label_col: str | None = None, image_col: str | None = None,
         image_size: int | None = None, model: str | None = None,
         recipe: Recipe | None = None, workspace: str | os.PathLike | None = None, val_fraction: float = 0.2,
         name: str | None = None, resume: str | None = None, seed_check: bool = True, plateau: int | None = None,
         refit: bool = True, keep_models: int | None = 3, callbacks: Sequence[Any] = ()) -> TuneResult:
    """Run train -> evaluate -> diagnose -> adjust until the budget, the target or convergence ends it.

    ``budget`` is wall time from this call (reading the data, the range test and building caches count) or a
    number of search trials. ``resume`` continues a study by id with the data and options it was started
    with: finished trials are not re-run, interrupted ones are, and the time budget counts what was already
    spent. With ``seed_check`` the top two recipes are re-run with other seeds before the best is chosen,
    where that can change the answer (within a quarter of the budget), and their runs' weight average is
    handed back where it scores higher. ``plateau`` trials without a gain beyond validation noise end the
    study (0: never; default: 4 for the guided strategy, never for the others). With ``refit``, where the
    validation set is too small to tell the best recipes apart, they are scored by cross-validation over every
    labelled example where that is cheap, and the chosen one is trained on all of them (instead of the seed
    check); its scores are then estimates. ``task`` is "text", "tabular" or "auto", as for ``fit``. When the
    study ends, the models of its trials are removed from disk except the final model (and an ensemble's
    members), the ``keep_models`` best, and registered ones (None: every model stays); records stay.
    """
    from tuneloop.tuning.strategies import DataFacts, GuidedStrategy, make_strategy
    from tuneloop.tuning.study import Budget, FinalSteps, check_study_options, new_study_id, run_study

    started = time.monotonic()
    if resume is not None:
        with Workspace.open(workspace) as store:
            row = store.claim_study(resume)
        options = row["options"]
        spent_before = row["spent_seconds"]
        study_id = resume
    else:
        if data is None:
            raise ConfigError(["tune needs a data file, or --resume STUDY to continue a study."])
        base = recipe or Recipe()
        problems = option_problems(base, val_fraction) + check_study_options(strategy, prune, target, plateau)
        if keep_models is not None and not (isinstance(keep_models, int) and keep_models >= 0):
            problems.append(f"The 'keep_models' parameter must be an int >= 0 or None (every model). "
                            f"Got {keep_models!r} instead.")
        if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            problems.append(f"The 'name' parameter must be letters, digits, '_', '.', '-' (at most 64). "
                            f"Got {name!r} instead.")
        try:
            Budget.parse(budget)
        except ConfigError as error:
            problems += error.problems
        if problems:
            raise ConfigError(problems)
        options = {"data": _as_path(data), "val": _as_path(val) if val is not None else None, "budget": budget,
                   "strategy": strategy, "target": target, "prune": prune, "text_col": text_col,
                   "label_col": label_col, "image_col": image_col, "image_size": image_size, "model": model,
                   "recipe": base.to_dict(), "val_fraction": val_fraction, "plateau": plateau, "refit": refit,
                   "seed_check": seed_check, "keep_models": keep_models,
                   "task": modality_of(data, task, text_col, image_col)}
        if isinstance(data, (TextExamples, TableExamples)) or isinstance(val, (TextExamples, TableExamples)):
            options["data"], options["val"] = data, val  # in-memory examples: not resumable from the CLI
        spent_before = 0.0
        study_id = name or new_study_id()
    base = Recipe.from_dict(options["recipe"])
    modality = options.get("task", "text")
    loaded = load_task(options["data"], options["val"], task=modality, text_col=options["text_col"],
                       label_col=options["label_col"], model=options["model"],
                       val_fraction=options["val_fraction"], seed=base.seed, image_col=options.get("image_col"),
                       image_size=options.get("image_size"))
    task = loaded
    base = base.for_objective(task.objective.name)
    num_layers = _num_layers(loaded.backbone) if modality == "text" else getattr(task, "num_layers", None)
    facts = DataFacts(num_layers, len(task.train), _smallest_class(task), getattr(task, "pair_seconds", None),
                      len(task.val), getattr(task, "text_seconds", None))
    plan = make_strategy(options["strategy"], num_layers, task.family, facts, options.get("plateau"))

    with Workspace.open(workspace, create=True) as store:
        if isinstance(task, (TextTask, ImageTask)):  # frozen-layer outputs, shared with later studies
            task.features = FeatureCache(store.root / "cache")
        if resume is None and isinstance(plan, GuidedStrategy):
            _first_rate_from_range_test(plan, task, base)
        if resume is None:
            stored = {k: (v.source if isinstance(v, (TextExamples, TableExamples)) else v)
                      for k, v in options.items()}
            store.create_study(study_id, options["strategy"], base.metric, stored)

        def train_trial(trial_recipe: Recipe, training_callbacks: list[Callback], checkpoint_name: str):
            return train_run(store, task, trial_recipe, training_callbacks,
                             EpochCheckpoint(store.root / "checkpoints" / study_id / checkpoint_name))

        def refit_on_all(refit_recipe: Recipe, estimate: dict[str, Any], training_callbacks: list[Callback],
                         checkpoint_name: str) -> Run:
            return refit_run(store, task, refit_recipe, estimate, training_callbacks,
                             EpochCheckpoint(store.root / "checkpoints" / study_id / checkpoint_name))

        final = FinalSteps(soup=lambda run_ids, soup_recipe: soup_run(store, task, run_ids, soup_recipe),
                           ensemble=lambda run_ids, estimate: ensemble_run(store, task, run_ids, estimate),
                           cross_validate=lambda cv_recipe, k: cross_validate(task, cv_recipe, k, base.seed),
                           refit=refit_on_all if options.get("refit", True) else None,
                           shares_start=task.starts_pretrained and base.init == "pretrained")

        # The budget counts from this call: reading the data, the range test and the first caches are spent
        # from it like any trial's time (recorded with the study, so a resumed one counts them too).
        setup = time.monotonic() - started
        store.add_spent(study_id, setup)
        result = run_study(store, study_id, task, base, plan, Budget.parse(options["budget"]),
                           target=options["target"], prune=options["prune"], train_trial=train_trial,
                           callbacks=callbacks, spent_before=spent_before + setup,
                           seed_check=options.get("seed_check", True), final=final,
                           keep_models=options.get("keep_models", 3))
    best_run = load_run(result.best.run_id, workspace) if result.best else None
    return TuneResult(study_id, best_run, result.trials, result.stop_reason, result.spent_seconds,
                      result.seed_check, result.choice)


def _smallest_class(task: Any) -> int | None:
    """Training examples of the rarest class (None for a regressor)."""
    if task.objective.name != "classification":
        return None
    labels = task.train.labels if hasattr(task.train, "labels") else None
    if labels is None:
        return None
    _, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    return int(counts.min()) if len(counts) else None


def _as_path(value: Any) -> Any:
    return str(Path(value).resolve()) if isinstance(value, (str, os.PathLike)) else value


def _num_layers(backbone: str) -> int | None:
    try:
        return int(json.loads((Path(backbone) / "config.json").read_text()).get("num_hidden_layers"))
    except (OSError, ValueError, TypeError):
        return None


def lr_find(data: Any, val: Any = None, *, task: str = "auto", text_col: str | None = None,
            label_col: str | None = None, image_col: str | None = None, image_size: int | None = None,
            model: str | None = None, recipe: Recipe | None = None, val_fraction: float = 0.2,
            plot: str | os.PathLike | None = None, **recipe_changes: Any):
    """The learning-rate range test for ``recipe`` on the training data; writes nothing but ``plot``.

    Frozen layers run once: a head-only recipe sweeps over cached encoder (or image body) vectors, so it
    takes seconds.
    """
    from tuneloop.training.lr_find import find_learning_rate
    from tuneloop.training.lr_find import plot as plot_finding

    recipe = (recipe or Recipe()).replace(**recipe_changes)
    check_options(recipe, val_fraction)
    task = load_task(data, val, task=task, text_col=text_col, label_col=label_col, model=model,
                     val_fraction=val_fraction, seed=recipe.seed, image_col=image_col, image_size=image_size)
    finding = _find_on(task, recipe, find_learning_rate)
    if plot is not None:
        plot_finding(finding, str(plot))
    return finding


def _first_rate_from_range_test(plan, task: TextTask, base: Recipe) -> None:
    """The guided study's first (head-only) recipe takes its learning rate from the range test, which runs
    on the cached encoder vectors that the first trial needs anyway."""
    from tuneloop.training.lr_find import find_learning_rate

    try:
        finding = _find_on(task, plan.first_recipe(base), find_learning_rate)
    except ValueError:  # the sweep diverged at once: keep the default rate
        return
    plan.first_learning_rate = min(1e-2, max(1e-4, finding.suggestion))
    plan.first_note = f", at the learning rate the range test suggests ({finding.reason})"


def _find_on(task: TextTask | TableTask, recipe: Recipe, finder):
    """The range test of ``recipe`` on ``task`` (of a recipe with contrastive tuning: on the untuned encoder)."""
    recipe = recipe.replace(contrastive=0)
    torch.manual_seed(recipe.seed)
    device = pick_device()
    precision = training_precision(task, recipe.precision, device, recipe)
    prepared = task.prepare(recipe, device, precision)
    return finder(prepared.trainable, prepared.train_set, recipe, device, precision, objective=task.objective)
