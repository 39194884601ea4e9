"""A saved run's view of a set of examples, whatever their kind: its predictions, a score per example (what
the promotion gate compares, pairwise), and its inner representation (what a drift check compares). Each kind
of data reads, predicts and embeds its own examples (``tasks``)."""

from __future__ import annotations

import dataclasses

import numpy as np

from tuneloop.continual.samples import Examples, class_labels
from tuneloop.run import Predictions, Run
from tuneloop.tasks import DataOptions


def is_regressor(run: Run) -> bool:
    return not run.classes


def predict_examples(run: Run, examples: Examples) -> Predictions:
    return run.task.predict(run, examples)


def example_scores(run: Run, examples: Examples, predictions: Predictions | None = None) -> np.ndarray:
    """Per example: 1.0 where the run's label is right and 0.0 where it is wrong (a label the run does not
    know is wrong); for a regressor, the negative absolute error (a forecaster's: of its window, over its
    series' seasonal-naive scale; a language model's, its answer loss). Higher is better either way. Its kind
    computes a regressor's errors from ``predictions`` where given, else as it needs (a language model's loss
    is of no prediction: it writes none)."""
    if is_regressor(run):
        return -run.task.errors(run, examples, None if predictions is None else predictions.values)
    predictions = predictions or predict_examples(run, examples)
    labels = class_labels(examples)
    return np.array([p == t for p, t in zip(predictions.labels, labels, strict=True)], dtype=np.float64)


def embeddings(run: Run, examples: Examples) -> np.ndarray:
    """The run's representation of each example just before its head: the pooled text vector, the image
    body's pooled features, or a table row's last hidden layer (the rows' own features for a linear model)."""
    return run.task.embed(run, examples)


def read_like(run: Run, data: object, options: DataOptions, *, labelled: bool = True, text_col: str | None = None,
              label_col: str | None = None, image_col: str | None = None) -> Examples:
    """New data read as ``run``'s training data was: the same columns (unless named here), images at the
    run's size and channels. In-memory examples are taken as they are."""
    named = dataclasses.replace(options, text_col=text_col or options.text_col,
                                label_col=label_col or options.label_col, image_col=image_col or options.image_col)
    return run.task.read_like(run, data, named, labelled=labelled)
