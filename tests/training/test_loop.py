import math

import numpy as np
import pytest
import torch
from tests.conftest import sentiment_rows

from tuneloop.config import Recipe
from tuneloop.data.batches import Encoded, inference_order, training_order
from tuneloop.models import get_adapter
from tuneloop.training.loop import Callback, train
from tuneloop.training.metrics import classification_metrics, confusion_matrix
from tuneloop.training.schedule import lr_factor

CPU = torch.device("cpu")


def toy_sets(tiny_model, recipe: Recipe, n: int = 40):
    adapter = get_adapter("hf_text")
    torch.manual_seed(recipe.seed)
    model, tokenizer = adapter.build(str(tiny_model), 2, recipe)
    rows = sentiment_rows(n)
    labels = [1 if y == "pos" else 0 for _, y in rows]
    data = adapter.encode(tokenizer, [t for t, _ in rows], labels, recipe)
    val_rows = sentiment_rows(10, seed=1)
    val = adapter.encode(tokenizer, [t for t, _ in val_rows], [1 if y == "pos" else 0 for _, y in val_rows], recipe)
    return model, data, val


def test_training_order_groups_lengths_and_covers_every_example():
    lengths = np.random.default_rng(0).integers(1, 200, size=1000)
    batches = training_order(lengths, 10, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert lengths[batches[0]].max() == lengths.max()  # longest batch first
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 20  # random batches of 10 would spread over ~160 tokens


def test_inference_order_is_sorted_by_length():
    order = np.concatenate(inference_order(np.array([3, 9, 1, 5]), 2))
    assert order.tolist() == [1, 3, 0, 2]


def test_lr_schedule_warms_up_then_decays():
    assert lr_factor(0, 100, 10, "linear") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "linear") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(99, 100, 10, "constant") == 1.0


def test_metrics_and_confusion():
    true, predicted = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])
    assert confusion_matrix(true, predicted, 3).tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    metrics = classification_metrics(true, predicted, 3)
    assert metrics["accuracy"] == 0.5
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)


@pytest.mark.parametrize("trainable", [0, 1, "all"])
def test_frozen_parameters_do_not_change(tiny_model, trainable):
    recipe = Recipe(epochs=1, trainable_layers=trainable, learning_rate=1e-2, precision="fp32")
    model, data, val = toy_sets(tiny_model, recipe, n=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, data, val, recipe, CPU, "fp32")
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"head.weight", "head.bias"} <= changed
    embeddings = {k for k in before if "embeddings" in k}
    top_layer = {k for k in before if ".layer.1." in k}
    bottom_layer = {k for k in before if ".layer.0." in k}
    if trainable == 0:
        assert changed == {"head.weight", "head.bias"}
    elif trainable == 1:
        assert changed & top_layer and not changed & bottom_layer and not changed & embeddings
    else:
        assert changed & bottom_layer and changed & embeddings


def test_learns_a_separable_task(tiny_model):
    recipe = Recipe(epochs=4, learning_rate=2e-3, batch_size=8, patience=0)
    model, data, val = toy_sets(tiny_model, recipe)
    result = train(model, data, val, recipe, CPU, "fp32")
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.best.val_accuracy == 1.0


class ScriptedMetric(Callback):
    """Records the epochs seen, to check early stopping and the restore of the best epoch."""

    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, record, is_best):
        self.epochs.append((record.epoch, is_best))


def test_early_stopping_and_best_epoch_restored(tiny_model):
    # A learning rate this high wrecks the model after the first epoch, so validation loss only rises.
    recipe = Recipe(epochs=8, learning_rate=0.5, batch_size=4, patience=2, metric="loss", grad_clip=0,
                    warmup_ratio=0.0, schedule="constant")
    model, data, val = toy_sets(tiny_model, recipe, n=12)
    seen = ScriptedMetric()
    result = train(model, data, val, recipe, CPU, "fp32", [seen])
    losses = [e.val_loss for e in result.history]
    best = int(np.argmin(losses)) + 1
    assert result.best_epoch == best
    assert result.stopped_early and len(result.history) == best + 2 < recipe.epochs
    assert seen.epochs[best - 1] == (best, True)
    from tuneloop.training.loop import evaluate

    assert evaluate(model, val, CPU, "fp32").loss == pytest.approx(losses[best - 1], rel=1e-5)


class StopAt(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, record, is_best: bool) -> None:
        from tuneloop.training.loop import StopTraining

        if record.epoch == self.epoch:
            raise StopTraining("pruned")


def test_the_epoch_a_pruner_ends_on_is_seen_by_every_later_callback(tiny_model):
    recipe = Recipe(epochs=5, batch_size=8, patience=0)
    model, data, val = toy_sets(tiny_model, recipe, n=12)
    recorded = ScriptedMetric()
    result = train(model, data, val, recipe, CPU, "fp32", [StopAt(2), recorded])
    assert [e.epoch for e in result.history] == [1, 2] and result.stopped_by == "pruned"
    assert [epoch for epoch, _ in recorded.epochs] == [1, 2], "the last epoch is recorded, not lost"


def test_divergence_is_reported_not_hidden(tiny_model):
    recipe = Recipe(epochs=2, learning_rate=1.0, batch_size=4, grad_clip=0, warmup_ratio=0.0, schedule="constant")
    model, data, val = toy_sets(tiny_model, recipe, n=8)
    with torch.no_grad():
        model.head.weight.fill_(math.inf)
    result = train(model, data, val, recipe, CPU, "fp32")
    assert result.diverged and result.history == []


def test_encoded_lengths():
    assert Encoded([[1, 2], [3]], None, 0).lengths.tolist() == [2, 1]


class Boom(Callback):
    """Stands in for a kill: fails at the end of one epoch, after the previous epoch was checkpointed."""

    def __init__(self, at_epoch: int):
        self.at_epoch = at_epoch

    def on_epoch_end(self, record, is_best):
        if record.epoch == self.at_epoch:
            raise RuntimeError("killed")


def test_resumed_training_equals_uninterrupted_training(tiny_model, tmp_path):
    from tuneloop.training.checkpoint import EpochCheckpoint

    recipe = Recipe(epochs=4, learning_rate=2e-3, batch_size=8, patience=0, dropout=0.2)
    model, data, val = toy_sets(tiny_model, recipe)
    straight = train(model, data, val, recipe, CPU, "fp32")

    checkpoint = EpochCheckpoint(tmp_path / "ckpt")
    model, data, val = toy_sets(tiny_model, recipe)
    with pytest.raises(RuntimeError, match="killed"):
        train(model, data, val, recipe, CPU, "fp32", [Boom(at_epoch=3)], checkpoint=checkpoint)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["epoch-2"]

    model, data, val = toy_sets(tiny_model, recipe)  # a fresh process would rebuild the model from scratch
    torch.manual_seed(12345)  # and its random state would differ: the checkpoint restores it
    resumed = train(model, data, val, recipe, CPU, "fp32", checkpoint=checkpoint)
    assert resumed.resumed_from_epoch == 2
    timing = ("seconds", "train_samples_per_s")
    strip = [[{k: v for k, v in r.__dict__.items() if k not in timing} for r in h.history] for h in (straight, resumed)]
    assert strip[0] == strip[1]
    assert resumed.best_epoch == straight.best_epoch


def distance_from_start(tiny_model, recipe: Recipe) -> float:
    model, data, val = toy_sets(tiny_model, recipe)
    start = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    train(model, data, val, recipe, CPU, "fp32")
    return sum(float((v - start[k]).float().norm()) for k, v in model.encoder.state_dict().items())


def test_l2sp_keeps_the_encoder_near_its_pretrained_weights(tiny_model):
    recipe = Recipe(epochs=2, learning_rate=5e-3, batch_size=8, patience=0, weight_decay=0.0)
    free = distance_from_start(tiny_model, recipe)
    held = distance_from_start(tiny_model, recipe.replace(l2sp=50.0))
    assert held < 0.6 * free, (held, free)


def test_layer_lr_decay_gives_lower_layers_smaller_rates(tiny_model):
    from tuneloop.training.schedule import make_optimizer

    recipe = Recipe(learning_rate=1e-3, layer_lr_decay=0.5)
    model, _, _ = toy_sets(tiny_model, recipe, n=2)
    optimizer = make_optimizer(model, recipe, CPU)
    rate_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert rate_of[id(named["head.weight"])] == pytest.approx(1e-3)
    assert rate_of[id(named["encoder.encoder.layer.1.attention.self.query.weight"])] == pytest.approx(5e-4)
    assert rate_of[id(named["encoder.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(2.5e-4)
    assert rate_of[id(named["encoder.embeddings.word_embeddings.weight"])] == pytest.approx(1.25e-4)
    flat = make_optimizer(model, recipe.replace(layer_lr_decay=1.0), CPU)
    assert {g["lr"] for g in flat.param_groups} == {1e-3}


def test_a_resumed_cnn_with_batchnorm_and_dropout_equals_its_uninterrupted_run(tmp_path):
    """Buffers (BatchNorm's running statistics) and the random state come back with the weights: a small CNN
    killed after epoch 2 and resumed ends exactly where the uninterrupted run does, in weights and buffers."""
    from tuneloop.data.images import Pixels
    from tuneloop.models.image_nets import build_image_network
    from tuneloop.training.checkpoint import EpochCheckpoint

    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8, generator=generator)
    data = Pixels(images, [i % 3 for i in range(24)])
    val = Pixels(images[:9], [i % 3 for i in range(9)])
    recipe = Recipe(epochs=4, learning_rate=3e-3, batch_size=8, patience=0, seed=5)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_image_network("small-cnn", 3, in_channels=3, recipe_dropout=0.3, width=16, stages=2,
                                   pretrained=False)

    straight_model = fresh()
    straight = train(straight_model, data, val, recipe, CPU, "fp32")
    checkpoint = EpochCheckpoint(tmp_path / "ckpt")
    with pytest.raises(RuntimeError, match="killed"):
        train(fresh(), data, val, recipe, CPU, "fp32", [Boom(at_epoch=3)], checkpoint=checkpoint)
    resumed_model = fresh()
    torch.manual_seed(999)  # another process's random state: the checkpoint restores it
    resumed = train(resumed_model, data, val, recipe, CPU, "fp32", checkpoint=checkpoint)
    assert [e.val_loss for e in resumed.history] == pytest.approx([e.val_loss for e in straight.history], abs=1e-6)
    buffers = dict(resumed_model.named_buffers())
    assert any("running_mean" in name for name in buffers), "the case that matters: BatchNorm statistics"
    for name, tensor in straight_model.state_dict().items():
        assert torch.allclose(tensor.float(), resumed_model.state_dict()[name].float(), atol=1e-6), name


def test_the_best_epoch_is_restored_with_its_batchnorm_statistics():
    """BatchNorm's running statistics are buffers, not parameters: restoring the best epoch must restore them
    too, or a model whose best epoch is not its last scores differently from what was recorded."""
    from dataclasses import dataclass

    from tuneloop.data.batches import Features, PerEpoch
    from tuneloop.training.loop import evaluate

    @dataclass(frozen=True)
    class Drifting(PerEpoch):
        """Each epoch's inputs are shifted further: the running mean drifts away from the validation data."""

        def for_epoch(self, epoch: int) -> Features:
            return Features(self.plain.vectors + 3.0 * epoch, self.plain.label_ids)

    torch.manual_seed(0)
    vectors = torch.randn(64, 4)
    labels = (vectors[:, 0] > 0).long().tolist()
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    forward = model.forward
    model.forward = lambda features: forward(features)  # the loop calls model(features=...)
    val = Features(vectors.clone(), labels)
    result = train(model, Drifting(Features(vectors, labels)), val, Recipe(epochs=4, patience=0, learning_rate=1e-2,
                                                                          metric="loss", seed=0), CPU, "fp32")
    assert result.best_epoch < 4, "the drift makes a later epoch worse (the case that matters)"
    assert evaluate(model, val, CPU, "fp32").loss == pytest.approx(result.best.val_loss, rel=1e-6)
