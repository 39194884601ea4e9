"""The forecasting task: one or more time series, and a network that forecasts each series' next ``horizon``
points from the ``context`` points before them (``models/series_nets.py``: DLinear, N-BEATS, PatchTST),
trained from random weights, or fine-tuned from a forecaster trained earlier (on many series, say).

Examples are forecast windows (``data/series.py``); validation windows are each series' last stretch, never
shuffled. Every window is standardized by its own context (``training.objective.Forecast``), so one network
serves series of any level and scale, and a base trained on a collection fine-tunes on a series of its own.
Scores are MASE against the seasonal-naive forecast (the last season repeated), sMAPE, MAE and RMSE, with the
seasonal-naive forecast's own figures next to them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop.config import Recipe
from tuneloop.data.batches import Batch, PerEpoch
from tuneloop.data.files import read_table
from tuneloop.data.series import (
    MIN_CONTEXT,
    SeriesExamples,
    SeriesFile,
    check_length,
    read_series_file,
    seasonal_naive,
    split_origins,
)
from tuneloop.errors import ConfigError, DataError
from tuneloop.models import get_adapter
from tuneloop.models.series_nets import SeriesPreprocessing
from tuneloop.tasks import (
    COMMON_KNOBS,
    DataOptions,
    DataSource,
    KindDefaults,
    Predictions,
    Prepared,
    register,
    saved_classes,
)
from tuneloop.training.device import pick_device, resolve_precision
from tuneloop.training.loop import predict_outputs
from tuneloop.training.objective import FORECAST, forecast_metrics
from tuneloop.tuning.family import Family
from tuneloop.tuning.policy import (
    MAX_HIDDEN_LAYERS,
    MAX_HIDDEN_UNITS,
    MIN_LEARNING_RATE,
    TABLE_MAX_RATE,
    TEXT_RULES,
    Felt,
    Move,
    Scale,
    SetTo,
    Step,
    ToBestEpoch,
)
from tuneloop.tuning.space import scratch_learning_rate
from tuneloop.tuning.strategies import DataFacts

SPREAD_FLOOR = 1e-3  # a context's spread below this share of its mean level is taken as that share
SERIES_MAX_EPOCHS = 300  # an epoch over a few hundred windows takes milliseconds
MAX_CONTEXT_HORIZONS = 16  # a longer context than this many horizons is not tried
PREDICT_BATCH = 512


@dataclass(frozen=True)
class Windows:
    """Standardized contexts and, where known, labels (standardized targets, then each context's mean and
    spread and its series' seasonal-naive scale): what the training loop reads."""

    contexts: torch.Tensor  # windows x context
    labels: torch.Tensor | None  # windows x (horizon + 3)

    def __len__(self) -> int:
        return len(self.contexts)

    @property
    def lengths(self) -> np.ndarray:
        return np.ones(len(self), dtype=np.int64)

    @property
    def label_ids(self) -> np.ndarray | None:
        return None if self.labels is None else self.labels.numpy()

    def batch(self, indices: np.ndarray) -> Batch:
        rows = torch.from_numpy(indices)
        return Batch({"context": self.contexts[rows]}, None if self.labels is None else self.labels[rows], indices)


@dataclass(frozen=True)
class AugmentedWindows(PerEpoch):
    """Training windows drawn afresh each epoch: noise on the standardized context (``strength`` / 2 of its
    spread at most), and with probability ``strength`` the oldest part of the context cut away (its oldest
    remaining point repeated before it: window slicing)."""

    plain: Windows
    strength: float = 0.0
    seed: int = 0

    def for_epoch(self, epoch: int) -> Windows:
        rng = np.random.default_rng([self.seed, epoch])
        contexts = self.plain.contexts.numpy().copy()
        n, length = contexts.shape
        contexts += rng.normal(0.0, self.strength / 2, size=(n, 1)) * rng.standard_normal(contexts.shape)
        for row in np.flatnonzero(rng.random(n) < self.strength):
            cut = int(rng.integers(0, length // 2 + 1))
            contexts[row, :cut] = contexts[row, cut]
        return Windows(torch.from_numpy(contexts.astype(np.float32)), self.plain.labels)


def standardize(contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each context less its mean, over its spread: its standard deviation, or where that is below SPREAD_FLOOR
    of its mean level (a flat context), the larger of that share and SPREAD_FLOOR itself; returns the
    standardized contexts, the means and the spreads."""
    mean = contexts.mean(1, keepdims=True)
    spread = contexts.std(1, keepdims=True)
    floor = np.maximum(SPREAD_FLOOR * np.abs(mean), 1e-8)
    spread = np.where(spread < floor, np.maximum(floor, SPREAD_FLOOR), spread)
    return (contexts - mean) / spread, mean, spread


def windows_of(examples: SeriesExamples, context: int, season: int) -> Windows:
    """The windows as the network reads them (labels too, where the examples have targets)."""
    contexts, mean, spread = standardize(examples.contexts(context))
    labels = None
    if examples.labelled:
        targets = (examples.targets() - mean) / spread
        labels = torch.from_numpy(np.concatenate(
            [targets, mean, spread, examples.naive_scales(season)[:, None]], axis=1).astype(np.float32))
    return Windows(torch.from_numpy(contexts.astype(np.float32)), labels)




@register
@dataclass
class SeriesTask(KindDefaults):
    """Checked training and validation windows of some series, and how they were read."""

    train: SeriesExamples
    val: SeriesExamples
    season: int
    backbone: str = "a forecaster trained from scratch"
    start: SeriesPreprocessing | None = None  # where training starts from a saved forecaster: how it reads
    data_options: DataOptions | None = None
    modality = "series"
    claim_order = 1  # before tables: a table with a time column and numbers only is a series
    default_model = "a forecaster trained from scratch (dlinear, nbeats or patchtst)"
    knobs = COMMON_KNOBS - {"label_smoothing"} | {"hidden_layers", "hidden_units", "context", "forecaster", "l2sp"}
    adapter_name = "series_net"
    starts_pretrained = False
    error_name = "MASE"  # what the promotion gate calls a window's error, and the naive answer it must beat
    naive_name = "the seasonal-naive forecast (the last season repeated)"
    classes: list[str] = field(default_factory=list)  # a forecaster has none

    # -- reading data ---------------------------------------------------------------------------------------

    @classmethod
    def claims(cls, source: DataSource) -> bool:
        """Windows in memory, or a table with a time column whose other columns are numbers (or one column of
        series ids): a time series."""
        if isinstance(source.data, SeriesExamples):
            return True
        table = source.table
        if table is None:
            return False
        try:
            read_series_file(table.path, time_col=source.options.time_col, series_col=source.options.series_col,
                             value_col=source.options.label_col, table=table, check_steps=False)
        except DataError:
            return False
        return True

    @classmethod
    def read(cls, data: Any, val: Any, options: DataOptions, *, model: str | None = None,
             keep_classes: bool = False) -> SeriesTask:
        """``model``: a saved forecaster's folder to fine-tune (its context and horizon kept), or None."""
        start = None
        model = None if model == cls.backbone else model
        if model is not None:
            if saved_classes(model) is None:
                raise ConfigError([f"--model {model}: series train a forecaster from scratch (choose it with "
                                   "--forecaster), or fine-tune a saved forecaster (give its run's model folder)."])
            start = get_adapter(cls.adapter_name).load(str(model))[1]
        if isinstance(data, SeriesExamples):
            if val is None or not isinstance(val, SeriesExamples):
                raise ConfigError(["Windows in memory need validation windows in memory too."])
            if start is not None and data.horizon != start.horizon:
                raise ConfigError([f"--model {model} forecasts {start.horizon} points ahead; these windows "
                                   f"forecast {data.horizon}."])
            season = options.season or (start.season if start else data.step.season)
            return cls(data, val, season, str(model) if start else cls.backbone, start)
        file = read_as_saved(data, start, options.time_col, options.series_col, options.label_col)
        season = options.season or (start.season if start else file.step.season)
        horizon = options.horizon or (start.horizon if start else default_horizon(file, season))
        if start is not None and horizon != start.horizon:
            raise ConfigError([f"--model {model} forecasts {start.horizon} points ahead; --horizon {horizon} "
                               "differs. Fine-tune it with its horizon, or train a new forecaster."])
        first = MIN_CONTEXT
        if val is None:
            check_length(file, horizon, options.val_fraction, first)
            train_origins, val_origins = split_origins(file, horizon, options.val_fraction, first)
            train, held = file.windows(train_origins, horizon), file.windows(val_origins, horizon)
        else:
            check_length(file, horizon, 0.0, first)
            train = file.windows({k: list(range(first, len(s) - horizon + 1)) for k, s in file.series.items()},
                                 horizon)
            held = validation_windows(read_series_file(val, time_col=file.time_col, series_col=file.series_col,
                                                       value_col=options.label_col), horizon)
        return cls(train, held, season, str(model) if start else cls.backbone, start)

    # -- the task -------------------------------------------------------------------------------------------

    @property
    def horizon(self) -> int:
        return self.train.horizon

    @property
    def kind(self) -> str:
        return "series-forecast"

    @property
    def objective(self) -> Any:
        return FORECAST

    @property
    def val_labels(self) -> list[str]:
        return []

    def context_for(self, recipe: Recipe) -> int:
        """The points a recipe's forecaster reads: a saved forecaster's own; else the recipe's, or with 0 four
        horizons (at least two seasons, and MIN_CONTEXT)."""
        if self.start is not None:
            return self.start.context
        if recipe.context:
            return recipe.context
        return max(4 * self.horizon, 2 * self.season, MIN_CONTEXT)

    @cached_property
    def family(self) -> Family:
        """This task's rule table and search space: a context of up to MAX_CONTEXT_HORIZONS horizons."""
        return series_family(self.horizon, self.season, self.context_for(Recipe()))

    def default_recipe(self, base: Recipe) -> Recipe:
        """``base`` (the defaults) as a forecaster from random weights trains by default: at an MLP's rate, for
        many epochs (milliseconds each) stopped by validation, its context made concrete."""
        return base.replace(learning_rate=1e-3, epochs=100, patience=10, context=self.context_for(base),
                            batch_size=32)

    def facts(self) -> DataFacts:
        return DataFacts(None, len(self.train), None, None, len(self.val))

    def cache_in(self, folder: Path) -> None:
        """Nothing to keep: windows are cut in memory."""

    def baseline(self) -> dict[str, float]:
        """The seasonal-naive forecast's scores on the validation windows (what MASE 1 means)."""
        return naive_scores(self.val, self.season)

    def preprocessing(self, context: int) -> SeriesPreprocessing:
        return SeriesPreprocessing(self.train.time_col, self.train.series_col, self.train.value_cols,
                                   self.train.step, self.season, self.horizon, context)

    def prepare(self, recipe: Recipe, device: torch.device, precision: str, *, cache_features: bool = True
                ) -> Prepared:
        context = self.context_for(recipe)
        adapter = get_adapter(self.adapter_name)
        if self.start is not None:
            network = adapter.load_start(self.backbone, recipe)
        else:
            network = adapter.build(self.preprocessing(context), recipe)
        train_set: Any = windows_of(self.train, context, self.season)
        if recipe.augment > 0:
            train_set = AugmentedWindows(train_set, recipe.augment, recipe.seed)
        return Prepared(network, self.preprocessing(context), network, train_set,
                        windows_of(self.val, context, self.season))

    def pool(self) -> SeriesExamples:
        return self.train.joined(self.val)

    def pool_labels(self) -> list[float]:
        """Each window's mean target (what folds are split by)."""
        pool = self.pool()
        return [float(v) for v in pool.targets().mean(1)]

    def folds(self, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Blocked folds in time: each series' windows in order of their origins, cut into ``k`` consecutive
        blocks; a fold validates one block of every series and trains on the rest, less the windows whose
        forecasts overlap the block's (purged: neighbouring windows share most of their points, so a random
        split would score a model on what it trained on). Empty where a fold would be empty. ``seed`` is not
        read: nothing is drawn."""
        pool = self.pool()
        keys, origins = np.asarray(pool.keys), np.asarray(pool.origins)
        block = np.full(len(pool), -1)
        for key in dict.fromkeys(pool.keys):
            rows = np.flatnonzero(keys == key)
            for number, part in enumerate(np.array_split(rows[np.argsort(origins[rows], kind="stable")], k)):
                block[part] = number
        splits = []
        for number in range(k):
            val = np.flatnonzero(block == number)
            keep = block != number
            for key in dict.fromkeys(keys[val]):
                mine = origins[val][keys[val] == key]
                ahead = self.horizon
                keep &= ~((keys == key) & (origins + ahead > mine.min()) & (origins < mine.max() + ahead))
            train = np.flatnonzero(keep)
            if not len(val) or not len(train):
                return []
            splits.append((train, val))
        return splits

    def fold(self, train_rows: np.ndarray, val_rows: np.ndarray | None = None) -> SeriesTask:
        pool = self.pool()
        val = self.val if val_rows is None else pool.subset(val_rows)
        return replace(self, train=pool.subset(train_rows), val=val, data_options=self.data_options)

    # -- a saved run of this kind, on new data --------------------------------------------------------------

    @classmethod
    def read_like(cls, run: Any, data: Any, options: DataOptions, *, labelled: bool) -> SeriesExamples:
        """The series of a file read as the run's were. Labelled: the windows that forecast each series' last
        fifth (at least one horizon), every origin in turn; unlabelled: one window per series, forecasting
        the ``horizon`` points after its end."""
        if isinstance(data, SeriesExamples):
            return data
        if not isinstance(data, (str, os.PathLike)):
            raise ConfigError([f"run {run.id} forecasts series: give it a data file."])
        saved = run.model()[1]
        file = read_as_saved(data, saved, None, None, options.label_col)
        if file.step != saved.step:
            raise DataError(f"{data}: the series step by {file.step.describe()}; run {run.id} forecasts series "
                            f"that step by {saved.step.describe()}.")
        if labelled:
            check_length(file, saved.horizon, 0.2, 1)
            return validation_windows(file, saved.horizon)
        return file.windows({key: [len(points)] for key, points in file.series.items()}, saved.horizon,
                            labelled=False)

    @classmethod
    def truth(cls, run: Any, examples: SeriesExamples) -> np.ndarray:
        return examples.targets()

    @classmethod
    def predict(cls, run: Any, examples: SeriesExamples, precision: str = "auto") -> Predictions:
        """The forecasts of each window, in the series' units (``values``: windows x horizon)."""
        model, saved = run.model()
        device = pick_device()
        precision = resolve_precision(precision, device)
        contexts, mean, spread = standardize(examples.contexts(saved.context))
        windows = Windows(torch.from_numpy(contexts.astype(np.float32)), None)
        standardized = predict_outputs(model, windows, device, precision, FORECAST, PREDICT_BATCH)
        values = standardized.astype(np.float64) * spread + mean
        return Predictions([], np.zeros((len(values), 0), np.float32), [], values=values)

    @classmethod
    def choose_precision(cls, run: Any, examples: SeriesExamples) -> None:
        return None

    @classmethod
    def output_columns(cls, data: Any, examples: SeriesExamples) -> dict[str, list]:
        """One row per forecast point: its series and its time (the predictions follow, in that order)."""
        times = examples.future_times()
        names = [examples.series[key].name for key in examples.keys]
        return {"series": [name for name, steps in zip(names, times, strict=True) for _ in steps],
                examples.time_col: [time for steps in times for time in steps]}

    @classmethod
    def embed(cls, run: Any, examples: SeriesExamples) -> np.ndarray:
        model, saved = run.model()
        contexts = torch.from_numpy(standardize(examples.contexts(saved.context))[0].astype(np.float32))
        model.eval()
        with torch.inference_mode():
            return torch.cat([model.embed(contexts[i:i + PREDICT_BATCH]).float()
                              for i in range(0, len(contexts), PREDICT_BATCH)]).numpy()

    @classmethod
    def scores(cls, run: Any, examples: SeriesExamples, predictions: Predictions) -> dict[str, float]:
        """MASE, sMAPE, MAE, RMSE and R² of the forecasts, and the seasonal-naive forecast's."""
        saved = run.model()[1]
        return {**scored(predictions.values, examples, saved.season, saved.context),
                **naive_scores(examples, saved.season)}

    @classmethod
    def naive_errors(cls, run: Any, examples: SeriesExamples) -> np.ndarray:
        """Each window's seasonal-naive forecast's MASE."""
        season = run.model()[1].season
        return cls.errors(run, examples, seasonal_naive(examples.contexts(max(season, 1)), examples.horizon, season))

    @classmethod
    def errors(cls, run: Any, examples: SeriesExamples, values: np.ndarray | None = None) -> np.ndarray:
        """Each window's mean absolute error over its series' seasonal-naive scale (its MASE) (of forecasts
        ``values``, else forecast now)."""
        values = cls.predict(run, examples).values if values is None else values
        scale = examples.naive_scales(run.model()[1].season)
        return np.abs(values - examples.targets()).mean(1) / scale


def read_as_saved(data: Any, saved: SeriesPreprocessing | None, time_col: str | None, series_col: str | None,
                  value_col: str | None) -> SeriesFile:
    """A series file read with the columns named, else a saved forecaster's columns where the file has them (a
    base trained on a long-format collection reads one series of a fine-tune's file, or predicts it), else the
    columns found by name."""
    table = read_table(data)
    known = set(table.column_names)

    def column(given: str | None, kept: str | None) -> str | None:
        return given or (kept if kept in known else None)

    kept_value = saved.value_cols[0] if saved is not None and saved.series_col and saved.value_cols else None
    return read_series_file(data, time_col=column(time_col, saved and saved.time_col),
                            series_col=column(series_col, saved and saved.series_col),
                            value_col=column(value_col, kept_value), table=table)


def validation_windows(file: SeriesFile, horizon: int, val_fraction: float = 0.2) -> SeriesExamples:
    """Every window that forecasts points of each series' last ``val_fraction`` (at least one horizon)."""
    return file.windows(split_origins(file, horizon, val_fraction, MIN_CONTEXT)[1], horizon)


def default_horizon(file: SeriesFile, season: int) -> int:
    """A season ahead (12 months, 4 quarters, 7 days), or a tenth of the shortest series (at most 10) for
    series without one."""
    if season > 1:
        return season
    shortest = min(len(points) for points in file.series.values())
    return max(1, min(10, shortest // 10))


def scored(forecast: np.ndarray, examples: SeriesExamples, season: int, context: int) -> dict[str, float]:
    """The metrics of ``forecast`` on labelled windows (``training.objective.forecast_metrics``), R² against
    the mean of each window's ``context`` points."""
    _, level, spread = standardize(examples.contexts(context))
    return forecast_metrics(forecast, examples.targets(), examples.naive_scales(season), level, spread)


def naive_scores(examples: SeriesExamples, season: int) -> dict[str, float]:
    """The seasonal-naive forecast's MASE, sMAPE, MAE and RMSE on labelled windows."""
    forecast = seasonal_naive(examples.contexts(max(season, 1)), examples.horizon, season)
    found = scored(forecast, examples, season, max(season, MIN_CONTEXT))
    return {f"seasonal_naive_{name}": found[name] for name in ("mase", "smape", "mae", "rmse")}


def series_family(horizon: int, season: int, context: int) -> Family:
    """The rule table and search space of forecasters for a ``horizon`` (and ``season``) whose context starts at
    ``context`` points: capacity is the context, the network (DLinear, then N-BEATS, then PatchTST) and its
    width and depth; regularization is weight decay, dropout and augmentation (noise, window slicing)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    longest = max(context, MAX_CONTEXT_HORIZONS * horizon)
    rules = {
        "overfitting": (
            Move("weight_decay", Felt(total=0.1, first=0.05, high=1.0), "more weight decay"),
            Move("augment", Step(+0.2, high=0.6), "augment the training windows (more): noise, window slicing"),
            Move("dropout", Step(+0.1, high=0.5), "more dropout"),
            Move("context", Scale(1 / 2, low=max(horizon, 2 * season, MIN_CONTEXT)), "a shorter context"),
            Move("learning_rate", Scale(1 / 2, low=MIN_LEARNING_RATE), "lower learning rate"),
            Move("epochs", ToBestEpoch(), "stop at the best epoch"),
            Move("forecaster", SetTo("dlinear"), "a linear forecaster (DLinear): fewer weights"),
            Move("hidden_units", Scale(1 / 2, low=16), "a narrower network"),
        ),
        "underfitting": (
            Move("forecaster", SetTo("nbeats"), "an MLP forecaster (N-BEATS): more capacity than a linear map"),
            Move("context", Scale(2, high=longest), "a longer context"),
            Move("hidden_units", Scale(2, high=MAX_HIDDEN_UNITS), "a wider network"),
            Move("hidden_layers", Step(+1, high=MAX_HIDDEN_LAYERS), "a deeper network"),
            Move("learning_rate", Scale(2, high=TABLE_MAX_RATE), "higher learning rate"),
            Move("epochs", Scale(2, high=SERIES_MAX_EPOCHS), "more epochs"),
            Move("weight_decay", Scale(1 / 5, zero_below=1e-3), "less weight decay"),
            Move("dropout", Step(-0.1), "less dropout"),
        ),
        "diverged": TEXT_RULES["diverged"],
        "too_slow": (
            Move("learning_rate", Scale(2, high=TABLE_MAX_RATE), "higher learning rate"),
            Move("epochs", Scale(2, high=SERIES_MAX_EPOCHS), "more epochs"),
        ),
    }
    exploit = (
        Move("context", Scale(2, high=longest), "a longer context"),
        Move("forecaster", SetTo("nbeats"), "an MLP forecaster (N-BEATS)"),
        Move("forecaster", SetTo("patchtst"), "a transformer over patches (PatchTST)"),
        Move("learning_rate", Scale(1.5, high=TABLE_MAX_RATE), "a little higher learning rate"),
        Move("learning_rate", Scale(1 / 1.5, low=MIN_LEARNING_RATE), "a little lower learning rate"),
        Move("augment", Step(+0.2, high=0.6), "augment the training windows: noise, window slicing"),
    )
    rules["good_fit"] = rules["noisy_validation"] = exploit
    explore = (Move("forecaster", SetTo("patchtst"), "a transformer over patches (PatchTST)"),
               Move("context", Scale(4, high=longest), "a much longer context"),
               Move("hidden_units", Scale(4, high=MAX_HIDDEN_UNITS), "a much wider network"),
               Move("epochs", Scale(2, high=SERIES_MAX_EPOCHS), "longer training"))
    contexts = sorted({max(MIN_CONTEXT, c) for c in (context // 2, context, 2 * context, min(4 * context, longest))})
    space = {
        "forecaster": CategoricalDistribution(("dlinear", "nbeats", "patchtst")),
        "context": CategoricalDistribution(tuple(contexts)),
        "hidden_layers": IntDistribution(1, 4),
        "hidden_units": CategoricalDistribution((64, 128, 256, 512)),
        "lr_multiplier": FloatDistribution(0.1, 10.0, log=True),
        "weight_decay": FloatDistribution(0.0, 0.1),
        "dropout": FloatDistribution(0.0, 0.5),
        "augment": FloatDistribution(0.0, 0.5),
        "epochs": IntDistribution(30, 200),
    }
    grid = {"forecaster": ["dlinear", "nbeats", "patchtst"], "lr_multiplier": [0.3, 1.0, 3.0]}

    def first(base: Recipe, learning_rate: float, train_size: int | None) -> Recipe:
        return base.replace(forecaster="dlinear", context=base.context or context, learning_rate=learning_rate,
                            epochs=max(base.epochs, 100), patience=max(base.patience, 10),
                            hidden_layers=2, hidden_units=256, batch_size=32)

    return Family("series", rules, explore, space, grid, scratch_learning_rate, first,
                  "start with the cheapest capacity: a linear forecaster (DLinear) over "
                  f"{context} points", adapters=False)
