"""Table-row augmentation: noise on numeric columns only, rare classes drawn more often, drawn per epoch."""

from __future__ import annotations

import numpy as np
import torch
from tests.conftest import write_csv

from tuneloop import api
from tuneloop.data.augment_table import AugmentedRows, rebalanced_indices
from tuneloop.data.batches import Features
from tuneloop.tasks.table import TableTask, numeric_positions


def test_rebalancing_draws_rare_classes_more_as_strength_grows():
    labels = np.array([0] * 90 + [1] * 10)
    rng = np.random.default_rng(0)
    share = {s: np.mean([labels[rebalanced_indices(labels, s, rng)].mean() for _ in range(200)]) for s in (0, 1)}
    assert abs(share[0] - 0.10) < 0.01, "strength 0 keeps the class mix"
    assert abs(share[1] - 0.50) < 0.02, "strength 1 draws both classes equally"


def test_noise_touches_numeric_columns_only_and_is_drawn_per_epoch():
    vectors = torch.tensor([[0.5, 1.0, 0.0, -0.2], [1.5, 0.0, 1.0, 0.3]] * 10)
    plain = Features(vectors, [0, 1] * 10)
    rows = AugmentedRows(plain, np.array([0, 3]), strength=0.5, seed=3, num_classes=2)
    first = rows.for_epoch(1)
    assert set(first.vectors[:, 1].tolist()) <= {0.0, 1.0} and set(first.vectors[:, 2].tolist()) <= {0.0, 1.0}
    assert not set(first.vectors[:, 0].tolist()) <= {0.5, 1.5}, "numeric columns get noise"
    again = AugmentedRows(plain, np.array([0, 3]), 0.5, 3, num_classes=2).for_epoch(1)
    assert torch.equal(first.vectors, again.vectors)
    assert not torch.equal(first.vectors, rows.for_epoch(2).vectors)
    # a row's label travels with it: one-hot column 2 is 1 exactly for the rows of class 1
    assert [int(v) for v in first.vectors[:, 2].tolist()] == first.label_ids


def test_numeric_positions_skip_one_hot_slots_and_missing_indicators(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["size", "color", "weight", "label"],
                     [[str(i), ["red", "blue"][i % 2], "" if i == 3 else str(i * 2), "ab"[i % 2]] for i in range(12)])
    task = TableTask.load(path, None, target_col=None, val_fraction=0.25, seed=0)
    names = task.preprocessing.features.feature_names
    assert [names[i] for i in numeric_positions(task.preprocessing.features)] == ["size", "weight"]


def test_a_table_trains_with_augmentation(tmp_path):
    rows = [[str(i % 7), ["red", "blue", "green"][i % 3], "ab"[(i % 7) > 3]] for i in range(60)]
    path = write_csv(tmp_path / "t.csv", ["size", "color", "label"], rows)
    run = api.fit(path, workspace=tmp_path / "ws", augment=0.3, epochs=5, learning_rate=1e-2)
    assert run.recipe.augment == 0.3 and len(run.history) == 5


def test_mixup_blends_rows_and_class_probabilities_alike():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 20)
    plain = Features(vectors, [0, 1] * 20)
    epoch = AugmentedRows(plain, np.array([], dtype=np.int64), 0.0, seed=1, mixup=1.0, num_classes=2).for_epoch(1)
    targets = np.asarray(epoch.label_ids)
    assert targets.shape == (40, 2) and np.allclose(targets.sum(1), 1)
    assert np.all(targets.max(1) >= 0.5), "a mixed row stays mostly itself"
    # one-hot inputs mix exactly as their classes do
    assert np.allclose(epoch.vectors.numpy(), targets, atol=1e-6)
    assert not np.all(np.isin(targets, [0.0, 1.0])), "some rows are mixed"


def test_regression_rows_are_not_rebalanced_and_mix_their_values():
    plain = Features(torch.arange(30, dtype=torch.float32)[:, None], [float(i) for i in range(30)])
    unmixed = AugmentedRows(plain, np.array([0]), 0.0, seed=2, num_classes=0).for_epoch(1)
    assert unmixed.label_ids == plain.label_ids, "no rebalancing of a regression target"
    mixed = AugmentedRows(plain, np.array([]), 0.0, seed=2, mixup=0.5, num_classes=0).for_epoch(1)
    assert np.allclose(mixed.vectors[:, 0].numpy(), mixed.label_ids, atol=1e-5), "inputs and values blend alike"
