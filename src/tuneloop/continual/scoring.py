"""A saved run's view of a set of examples, whatever their kind: its predictions, a score per example (what
the promotion gate compares, pairwise), and its inner representation (what a drift check compares)."""

from __future__ import annotations

import numpy as np
import torch

from tuneloop.api import Predictions, Run
from tuneloop.continual.samples import Examples, class_labels
from tuneloop.data.batches import Features
from tuneloop.data.images import ImageExamples, Pixels
from tuneloop.data.tabular import TableExamples, load_table_examples
from tuneloop.data.text import TextExamples, load_text_examples
from tuneloop.models import get_adapter
from tuneloop.tasks.image import pooled_features, resized
from tuneloop.tasks.table import features_of
from tuneloop.training.device import pick_device, resolve_precision

EMBED_BATCH = 256


def is_regressor(run: Run) -> bool:
    return run.adapter == "tabular_mlp" and not run.classes


def predict_examples(run: Run, examples: Examples) -> Predictions:
    if isinstance(examples, ImageExamples):
        return run.predict_images(examples)
    if isinstance(examples, TableExamples):
        return run.predict_rows(examples)
    return run.predict_texts(examples.texts)


def example_scores(run: Run, examples: Examples, predictions: Predictions | None = None) -> np.ndarray:
    """Per example: 1.0 where the run's label is right and 0.0 where it is wrong (a label the run does not
    know is wrong); for a regressor, the negative absolute error. Higher is better either way."""
    predictions = predictions or predict_examples(run, examples)
    if is_regressor(run):
        assert isinstance(examples, TableExamples) and predictions.values is not None
        true = np.asarray(examples.targets, dtype=np.float64)
        return -np.abs(predictions.values - true)
    labels = class_labels(examples)
    return np.array([p == t for p, t in zip(predictions.labels, labels, strict=True)], dtype=np.float64)


def embeddings(run: Run, examples: Examples) -> np.ndarray:
    """The run's representation of each example just before its head: the pooled text vector, the image
    body's pooled features, or a table row's last hidden layer (the rows' own features for a linear model)."""
    model, preprocessor = run.model()
    device = pick_device()
    precision = resolve_precision("auto", device)
    if isinstance(examples, ImageExamples):
        pixels = resized(examples, preprocessor.size).pixels
        return pooled_features(model, Pixels(pixels, None), device, precision).numpy()
    if isinstance(examples, TableExamples):
        rows = TableExamples(examples.columns, None, examples.locations, examples.source)
        features: Features = features_of(rows, preprocessor)
        model.to(device).eval()
        with torch.inference_mode():
            out = [model.embed(features.vectors[i:i + EMBED_BATCH].to(device)).float().cpu()
                   for i in range(0, len(features), EMBED_BATCH)]
        return torch.cat(out).numpy()
    adapter = get_adapter("hf_text")
    encoded = adapter.encode(preprocessor, examples.texts, None, run.recipe)
    return adapter.embed_all(model, encoded, device, precision).numpy()


def read_like(run: Run, data: object, options: dict, *, labelled: bool = True, text_col: str | None = None,
              label_col: str | None = None, image_col: str | None = None) -> Examples:
    """New data read as ``run``'s training data was: the same columns (unless named here), images at the
    run's size and channels. In-memory examples are taken as they are."""
    if isinstance(data, (TextExamples, TableExamples, ImageExamples)):
        return data
    text_col = text_col or options.get("text_col")
    label_col = label_col or options.get("label_col")
    if run.adapter == "image_net":
        return run.read_images(data, labelled=labelled, image_col=image_col or options.get("image_col"),
                               label_col=label_col)
    if run.adapter == "tabular_mlp":
        return load_table_examples(data, label_col, labelled=labelled)
    return load_text_examples(data, text_col, label_col, labelled=labelled)
