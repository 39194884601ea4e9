"""Finished runs: a model folder with its recipe, classes and metrics, loaded to predict and evaluate new data
read as its kind of data reads it (``tasks``); ``load_run`` finds one by id, prefix, 'latest' or folder."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop.config import Recipe
from tuneloop.errors import ModelError, RunNotFoundError
from tuneloop.models import get_adapter
from tuneloop.models.ensemble import is_ensemble, member_adapter
from tuneloop.models.hf_text import ADAPTER_FILE
from tuneloop.models.quantize import quantize_int8
from tuneloop.store.workspace import Workspace
from tuneloop.tasks import LABELS_FILE, DataOptions, Predictions, Task, task_saved_with
from tuneloop.training.device import pick_device
from tuneloop.training.metrics import classification_metrics, confusion_matrix, roc_auc

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"


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
    """A finished run: its id, model folder, recipe and metrics; ``predict`` and ``evaluate`` load the model and
    read new data as its kind of data (``task``) reads it."""

    id: str
    path: Path
    recipe: Recipe
    metrics: dict[str, Any]
    classes: list[str]
    history: list[dict[str, float]] = field(default_factory=list)
    _loaded: tuple[torch.nn.Module, Any] | None = field(default=None, repr=False)
    _int8: torch.nn.Module | None = field(default=None, repr=False)
    # What its kind of data keeps between predictions (the int8 labels' agreement, the precision "auto" chose).
    memo: dict[str, Any] = field(default_factory=dict, repr=False)

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
    def task(self) -> type[Task]:
        """The kind of data this run's model reads (the task class that trained it)."""
        return task_saved_with(self.adapter)

    @property
    def is_ensemble(self) -> bool:
        return is_ensemble(self.path)

    def model(self) -> tuple[torch.nn.Module, Any]:
        """The network and its preprocessor (a tokenizer, or a table's fitted preprocessing)."""
        if self._loaded is None:
            self._loaded = get_adapter(self._saved_by).load(str(self.path))
        return self._loaded

    @property
    def _saved_by(self) -> str:
        return "ensemble" if self.is_ensemble else self.adapter

    def int8_model(self) -> torch.nn.Module:
        """The model with int8 linear layers, built on first use; the CPU only (ModelError on a GPU)."""
        if self._int8 is None:
            model = self.model()[0]
            if getattr(model, "uses_lora", False):  # fresh from training, adapters apart: the saved one is merged
                model = get_adapter(self._saved_by).load(str(self.path))[0]
            self._int8 = quantize_int8(model, pick_device())
        return self._int8

    def read(self, data: Any, *, labelled: bool, text_col: str | None = None, label_col: str | None = None,
             image_col: str | None = None) -> Any:
        """New data (a file, a folder, examples in memory, a list of texts) read as this run's training data
        was: the columns named here, images at the run's size."""
        options = DataOptions(text_col=text_col, label_col=label_col, image_col=image_col)
        return self.task.read_like(self, data, options, labelled=labelled)

    def predict(self, data: Any, *, text_col: str | None = None, image_col: str | None = None,
                precision: str = "auto") -> Predictions:
        """Predict labels (or a regressor's values) for a list of texts, or the texts, table rows or images of
        a data source. With "auto", the run's kind may choose the precision by measuring (texts: int8 where it
        is faster and agrees with fp32); the predictions then say what it chose, and why."""
        return self.predict_examples(self.read(data, labelled=False, text_col=text_col, image_col=image_col),
                                     precision)

    def predict_examples(self, examples: Any, precision: str = "auto") -> Predictions:
        """``predict`` on examples already read (``read``)."""
        chosen = self.task.choose_precision(self, examples) if precision == "auto" else None
        if chosen is None:
            return self.task.predict(self, examples, precision)
        precision, why = chosen
        return dataclasses.replace(self.task.predict(self, examples, precision), precision=precision,
                                   precision_reason=why)

    def predict_texts(self, texts: Sequence[str], precision: str = "auto") -> Predictions:
        """A text classifier's labels and class probabilities for ``texts``, in ``precision`` as asked, nothing
        measured (with 'int8' also how often its labels agree with fp32's)."""
        return self.task.predict(self, self.read(list(texts), labelled=False), precision)

    def evaluate(self, data: Any, *, text_col: str | None = None, label_col: str | None = None,
                 image_col: str | None = None, precision: str = "auto") -> EvaluationReport:
        """Scores on labelled data: accuracy, macro-F1, ROC AUC and the confusion matrix, or a regressor's MAE,
        RMSE and R², or a forecaster's MASE, sMAPE, MAE and RMSE with the seasonal-naive forecast's, or a language
        model's answer loss, perplexity and exact match."""
        examples = self.read(data, labelled=True, text_col=text_col, label_col=label_col, image_col=image_col)
        true = self.task.truth(self, examples)  # a class the run does not know is an error naming it
        predictions = self.task.predict(self, examples, precision)
        if not self.classes:  # a regressor's, forecaster's or language model's scores, as its kind computes them
            return EvaluationReport(self.task.scores(self, examples, predictions), None, [], len(true))
        predicted = predictions.probabilities.argmax(1)
        k = len(self.classes)
        metrics: dict[str, Any] = classification_metrics(true, predicted, k)
        area = roc_auc(true, predictions.probabilities)
        if area is not None:
            metrics["roc_auc"] = area
        return EvaluationReport(metrics, confusion_matrix(true, predicted, k), self.classes, len(true),
                                predictions.agreement_with_fp32)


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


