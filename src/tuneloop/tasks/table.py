"""The table task: a table with a target column, its preprocessing learned from the training rows, and an
MLP trained from scratch on the preprocessed row vectors. A target of classes makes a classifier; a numeric
target with many distinct values (``data/tabular.py``'s ``infer_task``) a regressor of its standardized value.

The preprocessing (``data/tabular.py``) is fitted once, when the data is loaded, and every row of the
training and validation sets is transformed then: a bad cell anywhere is reported before anything is
written, and every trial of a study trains on the same vectors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop.config import PRECISIONS, Recipe
from tuneloop.data.augment_table import AugmentedRows
from tuneloop.data.batches import Features
from tuneloop.data.files import read_table
from tuneloop.data.tabular import (
    NumericColumn,
    TableExamples,
    TabularPreprocessor,
    TargetEncoder,
    infer_task,
    load_table_examples,
    split_table,
    target_labels,
)
from tuneloop.errors import ConfigError
from tuneloop.models import get_adapter
from tuneloop.models.tabular_mlp import TablePreprocessing
from tuneloop.tasks import (
    COMMON_KNOBS,
    DataOptions,
    DataSource,
    KindDefaults,
    Predictions,
    Prepared,
    classes_keeping,
    label_folds,
    majority_rate,
    register,
    saved_classes,
)
from tuneloop.training.device import pick_device, resolve_precision
from tuneloop.training.loop import predict_outputs, predict_probabilities
from tuneloop.training.objective import CLASSIFICATION, Objective, Regression, regression_metrics
from tuneloop.tuning.family import Family, small_network
from tuneloop.tuning.policy import TABLE_EXPLORE, TABLE_RULES
from tuneloop.tuning.space import TABLE_GRID, TABLE_SPACE, scratch_learning_rate
from tuneloop.tuning.strategies import DataFacts

TABLE_FAMILY = Family("tabular", TABLE_RULES, TABLE_EXPLORE, TABLE_SPACE, TABLE_GRID, scratch_learning_rate,
                      small_network(1), "start with the cheapest capacity: an MLP of one layer of 64 units")
EMBED_BATCH = 256  # rows embedded at a time


@register
@dataclass
class TableTask(KindDefaults):
    """Checked training and validation rows, their fitted preprocessing, and the vectors it gives."""

    train: TableExamples
    val: TableExamples
    preprocessing: TablePreprocessing
    train_features: Features
    val_features: Features
    backbone: str = "mlp (trained from scratch)"
    start_classes: list[str] | None = None  # where training starts from a saved run's MLP: its classes
    data_options: DataOptions | None = None  # how the data was read and split (set by pipeline.load_task)
    modality = "tabular"
    claim_order = 2  # last: any table the other kinds do not claim
    default_model = "an MLP trained from scratch"  # what it trains where no model is named
    knobs = COMMON_KNOBS | {"hidden_layers", "hidden_units", "mixup"}
    adapter_name = "tabular_mlp"
    family = TABLE_FAMILY  # the guided policy's rule table and the search space
    starts_pretrained = False  # an MLP from random weights: runs of one recipe do not average into a model

    def default_recipe(self, base: Recipe) -> Recipe:
        """``base`` (the defaults) as an MLP from random weights trains by default: at an MLP's rate, for many
        epochs (milliseconds each) stopped by validation. The fine-tune defaults (3 epochs at a pretrained
        encoder's rate) leave it near the mean: diabetes R² 0.16."""
        return base.replace(learning_rate=1e-3, epochs=100, patience=10)

    @classmethod
    def claims(cls, source: DataSource) -> bool:
        """Rows in memory, or any table file (its columns are the features, one of them the target)."""
        return isinstance(source.data, TableExamples) or source.table is not None

    @classmethod
    def read(cls, data: Any, val: Any, options: DataOptions, *, model: str | None = None,
             keep_classes: bool = False) -> TableTask:
        """``model``: a saved table run's folder to continue from (its preprocessing and classes kept), or
        None (or this task's own backbone, as a run records it): an MLP from scratch."""
        model = None if model == cls.backbone else model
        if model is not None and saved_classes(model) is None:
            raise ConfigError([f"--model {model}: table rows train an MLP from scratch, or continue a saved table "
                               "run's (give its model folder); a pretrained backbone applies to texts only."])
        return cls.load(data, val, target_col=options.label_col, val_fraction=options.val_fraction,
                        seed=options.seed, model=model)

    @classmethod
    def load(cls, data: str | os.PathLike | TableExamples, val: str | os.PathLike | TableExamples | None, *,
             target_col: str | None, val_fraction: float, seed: int, model: str | None = None) -> TableTask:
        """Read and check the data, fit the preprocessing on the training rows and transform every row.

        With ``model``, a saved table run's folder, training continues from its MLP instead (an update): its
        preprocessing is kept as it was fitted, and a classifier keeps its classes, in their order, with the
        data's new classes added after them."""
        train = data if isinstance(data, TableExamples) else load_table_examples(data, target_col)
        start_classes = saved_classes(model)
        saved = get_adapter(cls.adapter_name).load(str(model))[1] if start_classes is not None else None
        task = saved.target.task if saved is not None else infer_task(train.targets)
        if val is None:
            train, val_examples = split_table(train, val_fraction, seed, task)
        else:
            val_examples = val if isinstance(val, TableExamples) else load_table_examples(val, target_col)
        if saved is None:
            preprocessing = TablePreprocessing(TabularPreprocessor().fit(train), TargetEncoder(task).fit(train))
        else:
            target = saved.target
            if task == "classification":
                labels = target_labels(train)
                target = TargetEncoder.from_dict({**target.to_dict(), "classes": classes_keeping(
                    list(target.classes or []), labels)})
            preprocessing = TablePreprocessing(saved.features, target)
        train_features, val_features = (features_of(part, preprocessing) for part in (train, val_examples))
        backbone = str(model) if saved is not None else cls.backbone
        return cls(train, val_examples, preprocessing, train_features, val_features, backbone, start_classes)

    def facts(self) -> DataFacts:
        """What the guided search sizes its moves by: the training and validation rows (an MLP has no
        pretrained depth, and no pairs)."""
        return DataFacts(None, len(self.train), None, None, len(self.val))

    def cache_in(self, folder: Path) -> None:
        """Nothing to keep: the rows are preprocessed once, in memory."""

    def baseline(self) -> dict[str, float]:
        """What a model that learned nothing scores on the validation rows: a classifier always answering the
        most common class, a regressor always answering the training mean (RMSE in the target's units)."""
        if self.objective.name == "regression":
            standardized = np.asarray(self.val_features.label_ids, dtype=np.float64)  # 0 is the training mean
            return {"mean_predictor_rmse": float(np.sqrt(np.mean(standardized ** 2))) * self.objective.scale}
        return majority_rate(self.val_labels)

    # -- a saved run of this kind, on new rows ---------------------------------------------------------------

    @classmethod
    def read_like(cls, run: Any, data: Any, options: DataOptions, *, labelled: bool) -> TableExamples:
        """New rows read as the run's training rows were (the target column named, or found as before)."""
        if isinstance(data, TableExamples):
            return data
        if not isinstance(data, (str, os.PathLike)):
            raise ConfigError([f"run {run.id} classifies table rows: give it a data file."])
        return load_table_examples(data, options.label_col, labelled=labelled)

    @classmethod
    def truth(cls, run: Any, rows: TableExamples) -> np.ndarray:
        """A classifier's class ids of the rows' targets (a class the run does not know is an error naming it),
        or a regressor's targets in their own units."""
        target = run.model()[1].target
        encoded = target.encode(rows)
        return encoded if target.task == "classification" else np.asarray(target.inverse(encoded))

    @classmethod
    def predict(cls, run: Any, rows: TableExamples, precision: str = "auto") -> Predictions:
        """Labels and class probabilities for table rows, preprocessed as the training rows were, or a
        regressor's values in the target's units."""
        if precision not in PRECISIONS:
            raise ConfigError([f"The 'precision' parameter of a table model must be one of {', '.join(PRECISIONS)}. "
                               f"Got {precision!r} instead."])
        model, preprocessing = run.model()
        features = features_of(TableExamples(rows.columns, None, rows.locations, rows.source), preprocessing)
        device = pick_device()
        precision = resolve_precision(precision, device)
        if preprocessing.target.task == "regression":
            standardized = predict_outputs(model, features, device, precision, Regression())[:, 0]
            return Predictions([], np.zeros((len(standardized), 0), np.float32), [],
                               values=preprocessing.target.inverse(standardized))
        probabilities = predict_probabilities(model, features, device, precision)
        return Predictions([run.classes[i] for i in probabilities.argmax(1)], probabilities, run.classes)

    @classmethod
    def scores(cls, run: Any, rows: TableExamples, predictions: Predictions) -> dict[str, float]:
        """A regressor's MAE, RMSE (in the target's units) and R² on rows with targets."""
        return regression_metrics(true=cls.truth(run, rows), predicted=predictions.values)

    @classmethod
    def errors(cls, run: Any, rows: TableExamples, values: np.ndarray | None = None) -> np.ndarray:
        """A regressor's absolute error on each row, in the target's units (of ``values``, else predicted now)."""
        values = cls.predict(run, rows).values if values is None else values
        return np.abs(values - cls.truth(run, rows))

    error_name = "mean absolute error"
    naive_name = "always answering the median"

    @classmethod
    def naive_errors(cls, run: Any, rows: TableExamples) -> np.ndarray:
        """A regressor's naive answer's absolute error on each row: of the rows' median target."""
        values = np.asarray(cls.truth(run, rows), dtype=np.float64)
        return np.abs(values - np.median(values))

    @classmethod
    def choose_precision(cls, run: Any, rows: TableExamples) -> None:
        """Nothing to measure: "auto" is what it means on the device."""
        return None

    @classmethod
    def output_columns(cls, data: Any, rows: TableExamples) -> dict[str, list]:
        """The rows of the file predicted, to write their predictions next to."""
        return dict(read_table(data).columns)

    @classmethod
    def embed(cls, run: Any, rows: TableExamples) -> np.ndarray:
        """Each row's last hidden layer (the rows' own features for a linear model)."""
        model, preprocessing = run.model()
        features = features_of(TableExamples(rows.columns, None, rows.locations, rows.source), preprocessing)
        device = pick_device()
        model.to(device).eval()
        with torch.inference_mode():
            out = [model.embed(features.vectors[i:i + EMBED_BATCH].to(device)).float().cpu()
                   for i in range(0, len(features), EMBED_BATCH)]
        return torch.cat(out).numpy()

    def pool(self) -> TableExamples:
        """Every labelled row: the training ones, then the validation ones."""
        return self.train.joined(self.val)

    def folds(self, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return label_folds(self, k, seed)

    def pool_labels(self) -> list:
        """Class names of a classifier's rows, values of a regressor's."""
        pool = self.pool()
        if self.preprocessing.target.task == "classification":
            return target_labels(pool)
        return [float(value) for value in self.preprocessing.target.encode(pool)]

    def fold(self, train_rows: np.ndarray, val_rows: np.ndarray | None = None) -> TableTask:
        """A task on the pooled rows ``train_rows`` (training, its preprocessing fitted on them) and
        ``val_rows`` (validation; without them, this task's validation rows, for the record only)."""
        pool = self.pool()
        val = self.val if val_rows is None else pool.subset(val_rows)
        model = self.backbone if self.start_classes is not None else None
        return TableTask.load(pool.subset(train_rows), val, target_col=None, val_fraction=0.2, seed=0, model=model)

    @property
    def kind(self) -> str:
        return f"tabular-{self.preprocessing.target.task}"

    @property
    def objective(self) -> Objective:
        target = self.preprocessing.target
        return CLASSIFICATION if target.task == "classification" else Regression(scale=float(target.std))

    @property
    def classes(self) -> list[str]:
        """The class names of a classifier; none for a regressor."""
        return list(self.preprocessing.target.classes or [])

    @property
    def val_labels(self) -> list[str]:
        return [str(label) for label in self.preprocessing.target.inverse(self.val_features.label_ids)]

    def prepare(self, recipe: Recipe, device: torch.device, precision: str, *, cache_features: bool = True
                ) -> Prepared:
        adapter = get_adapter(self.adapter_name)
        if self.start_classes is not None:
            network = adapter.load_start(self.backbone, self.start_classes, self.classes, recipe)
        else:
            network = adapter.build(self.preprocessing, recipe)
        train_set = self.train_features
        if recipe.augment > 0 or recipe.mixup > 0:
            train_set = AugmentedRows(self.train_features, numeric_positions(self.preprocessing.features),
                                      recipe.augment, recipe.seed, recipe.mixup, len(self.classes))
        return Prepared(network, self.preprocessing, network, train_set, self.val_features)


def numeric_positions(preprocessor: TabularPreprocessor) -> np.ndarray:
    """Where each numeric column's standardized value sits in a row vector (not its missing indicator)."""
    positions, offset = [], 0
    for column in preprocessor.columns:
        if isinstance(column, NumericColumn):
            positions.append(offset)
        offset += len(column.feature_names)
    return np.asarray(positions, dtype=np.int64)


def features_of(examples: TableExamples, preprocessing: TablePreprocessing) -> Features:
    """The rows of ``examples`` as the network's input (labels too, where the examples have targets)."""
    vectors = preprocessing.features.transform(examples.columns, source=examples.source,
                                               locations=examples.locations)
    labels = preprocessing.target.encode(examples) if examples.targets is not None else None
    return Features(torch.from_numpy(np.ascontiguousarray(vectors)),
                    None if labels is None else labels.tolist())

