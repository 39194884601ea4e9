"""Augmentation of training texts: drawn afresh each epoch from the seed and the epoch, never applied to
validation data, resumable, and visibly turning off the cache of frozen layers."""

from __future__ import annotations

import pytest
import torch
from tests.training.test_loop import Boom, toy_sets

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.data.augment_text import SynonymTable, TextAugmenter
from tuneloop.models import get_adapter
from tuneloop.tasks.text import AugmentedTexts
from tuneloop.training.checkpoint import EpochCheckpoint
from tuneloop.training.loop import train

CPU = torch.device("cpu")
TEXTS = ["the film was good and the acting was great", "a bad slow plot with awful dialogue all along",
         "great music and a good story overall", "the ending was terrible and far too long"] * 4


def augmented(tiny_model, strength: float = 0.5, seed: int = 7) -> AugmentedTexts:
    adapter = get_adapter("hf_text")
    recipe = Recipe()
    _, tokenizer = adapter.build(str(tiny_model), 2, recipe)
    labels = [i % 2 for i in range(len(TEXTS))]
    plain = adapter.encode(tokenizer, TEXTS, labels, recipe)
    table = SynonymTable.from_dict({"synonyms": {"good": ["fine"], "great": ["grand"], "bad": ["poor"]}})
    return AugmentedTexts(plain, TEXTS, TextAugmenter(strength, table),
                          lambda texts: adapter.encode(tokenizer, texts, labels, recipe), seed)


def test_each_epoch_draws_new_texts_and_the_same_seed_and_epoch_draw_the_same(tiny_model):
    data = augmented(tiny_model)
    first, second = data.for_epoch(1), data.for_epoch(2)
    assert first.input_ids != second.input_ids, "another epoch, other edits"
    assert augmented(tiny_model).for_epoch(1).input_ids == first.input_ids, "same seed and epoch, same texts"
    assert augmented(tiny_model, seed=8).for_epoch(1).input_ids != first.input_ids
    assert first.input_ids != data.plain.input_ids and first.label_ids == data.plain.label_ids
    assert augmented(tiny_model, strength=0.0).for_epoch(1).input_ids == data.plain.input_ids


def test_a_resumed_run_with_augmentation_equals_an_uninterrupted_one(tiny_model, tmp_path):
    recipe = Recipe(epochs=3, learning_rate=2e-3, batch_size=8, patience=0)
    model, _, val = toy_sets(tiny_model, recipe)
    straight = train(model, augmented(tiny_model), val, recipe, CPU, "fp32")
    checkpoint = EpochCheckpoint(tmp_path / "ckpt")
    model, _, val = toy_sets(tiny_model, recipe)
    with pytest.raises(RuntimeError, match="killed"):
        train(model, augmented(tiny_model), val, recipe, CPU, "fp32", [Boom(at_epoch=2)], checkpoint=checkpoint)
    model, _, val = toy_sets(tiny_model, recipe)
    resumed = train(model, augmented(tiny_model), val, recipe, CPU, "fp32", checkpoint=checkpoint)
    assert resumed.resumed_from_epoch == 1
    same = ("train_loss", "val_loss", "val_accuracy")
    assert [[getattr(r, k) for k in same] for r in straight.history] == \
        [[getattr(r, k) for k in same] for r in resumed.history]


def test_augmentation_turns_frozen_layer_caching_off_visibly(tiny_model, toy_csv, workspace):
    plain = api.fit(toy_csv, model=str(tiny_model), workspace=workspace, epochs=1, trainable_layers=1)
    assert plain.metrics["cached_inputs"] == "layer-1" and plain.metrics["not_cached"] is None
    run = api.fit(toy_csv, model=str(tiny_model), workspace=workspace, epochs=1, trainable_layers=1, augment=0.3)
    assert run.metrics["cached_inputs"] is None
    assert "augmentation" in run.metrics["not_cached"]
