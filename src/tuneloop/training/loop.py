"""THE training loop. Fit, search and adaptation all train through ``train`` below.

Read it top to bottom: set up the optimizer and schedule, then per epoch one pass over length-grouped
batches, a validation pass, early stopping on the chosen metric, and at the end the best epoch's weights
are put back into the model.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tuneloop.config import LOWER_IS_BETTER, Recipe
from tuneloop.data.batches import Batch, Examples, PerEpoch, inference_order, iterate, training_order
from tuneloop.training.checkpoint import EpochCheckpoint
from tuneloop.training.device import autocast
from tuneloop.training.fast_dropout import cpu_fast_dropout
from tuneloop.training.objective import CLASSIFICATION, Objective
from tuneloop.training.schedule import make_optimizer, make_scheduler

EVAL_BATCH = 64


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's losses and validation metrics: accuracy and macro-F1 for a classifier, MAE, RMSE and R²
    for a regressor, and MASE and sMAPE too for a forecaster (the others are None)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float | None
    val_macro_f1: float | None
    learning_rate: float
    train_samples_per_s: float
    seconds: float
    val_mae: float | None = None
    val_rmse: float | None = None
    val_r2: float | None = None
    val_mase: float | None = None
    val_smape: float | None = None

    def metric(self, name: str) -> float:
        value = self.val_loss if name == "loss" else getattr(self, f"val_{name}")
        if value is None:
            raise ValueError(f"Epoch {self.epoch} has no validation {name}: it was not recorded for this task.")
        return value


class StopTraining(Exception):
    """Raised by a callback to end training: at the end of an epoch (pruning, a spent budget), or after a step
    (a spent budget: the epoch ends there and is evaluated as it stands)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    diverged: bool = False
    stopped_by: str | None = None  # a callback's StopTraining reason
    resumed_from_epoch: int = 0  # epochs restored from a checkpoint instead of trained in this call
    seconds: float = 0.0
    best_val_predictions: np.ndarray | None = None  # the best epoch's validation predictions (not after a resume)

    @property
    def best(self) -> EpochRecord:
        return self.history[self.best_epoch - 1]


class Callback:
    """Hooks the loop calls; override the ones you need (progress display, recording to the database).

    A run may train a first phase before the recipe's own (contrastive tuning on pairs); a callback with
    ``main_phase_only`` (recording epochs, reporting to a pruner) is not told about that phase."""

    main_phase_only = False

    def on_train_start(self, total_steps: int, num_examples: int, epochs: int) -> None: ...

    def on_step(self, epoch: int, step: int, loss: float, samples_per_s: float) -> None: ...

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None: ...

    def on_resume(self, history: list[EpochRecord]) -> None:
        """Training continues from a checkpoint; ``history`` holds the epochs restored from it."""

    def on_train_end(self, result: TrainResult) -> None: ...


@dataclass(frozen=True)
class Evaluation:
    loss: float
    probabilities: np.ndarray  # the objective's predictions: examples x classes, or examples x 1 (regression)
    metrics: dict[str, float]


def train(model: nn.Module, train_set: Examples, val_set: Examples | None, recipe: Recipe, device: torch.device,
          precision: str, callbacks: list[Callback] | tuple[Callback, ...] = (),
          checkpoint: EpochCheckpoint | None = None, objective: Objective = CLASSIFICATION) -> TrainResult:
    """Train ``model`` in place by ``recipe`` for ``objective`` (classification by default); afterwards it
    holds the weights of the best validation epoch. Without ``val_set`` (a final fit on every labelled
    example, its epochs chosen beforehand) nothing is evaluated, nothing stops early and the last epoch is kept.

    With ``checkpoint``, every finished epoch is saved there, and training continues from the newest saved
    epoch if there is one (same batches, same random draws: the result is the one an uninterrupted run gives).
    """
    # On a CPU, drawing dropout masks is a large share of each step; draw them the cheap way.
    with cpu_fast_dropout(model) if device.type == "cpu" else contextlib.nullcontext():
        return _train(model, train_set, val_set, recipe, device, precision, callbacks, checkpoint, objective)


def _train(model: nn.Module, train_set: Examples, val_set: Examples | None, recipe: Recipe, device: torch.device,
           precision: str, callbacks: list[Callback] | tuple[Callback, ...],
           checkpoint: EpochCheckpoint | None, objective: Objective) -> TrainResult:
    recipe = recipe.for_objective(objective.name)  # metric "auto" picks this objective's own
    model.to(device)
    rng = np.random.default_rng(recipe.seed)
    steps_per_epoch = math.ceil(len(train_set) / recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    optimizer = make_optimizer(model, recipe, device)
    scheduler = make_scheduler(optimizer, recipe, total_steps)
    trainable_names = {name for name, p in model.named_parameters() if p.requires_grad}
    trainable = [p for p in model.parameters() if p.requires_grad]
    unfreezing = _gradual_depths(model, trainable_names) if recipe.unfreezing == "gradual" else None
    anchors = _pretrained_anchors(model) if recipe.l2sp > 0 else {}
    higher_is_better = recipe.metric not in LOWER_IS_BETTER
    for callback in callbacks:
        callback.on_train_start(total_steps, len(train_set), recipe.epochs)

    result = TrainResult()
    best_state: dict[str, torch.Tensor] | None = None
    best_score = (-math.inf, -math.inf)
    epochs_without_gain = 0
    first_epoch, finished = 1, False
    restored = checkpoint.load(model, optimizer, scheduler, rng) if checkpoint is not None else None
    if restored is not None:
        done, best_state, loop = restored
        result.history = [EpochRecord(**record) for record in loop["history"]]
        result.best_epoch, best_score = loop["best_epoch"], tuple(loop["best_score"])
        epochs_without_gain, finished = loop["epochs_without_gain"], loop["finished"]
        result.stopped_early, result.stopped_by = loop["stopped_early"], loop["stopped_by"]
        first_epoch, result.resumed_from_epoch = done + 1, done
        for callback in callbacks:
            callback.on_resume(result.history)
    started = time.perf_counter()
    for epoch in range(first_epoch, recipe.epochs + 1):
        if finished:
            break
        if unfreezing is not None:
            _unfreeze_for_epoch(model, unfreezing, epoch)
        model.train()
        epoch_start = time.perf_counter()
        loss_sum, seen = 0.0, 0
        # Augmented data is drawn afresh each epoch, from the epoch number: a resumed run draws the same.
        epoch_set = train_set.for_epoch(epoch) if isinstance(train_set, PerEpoch) else train_set
        order = training_order(epoch_set.lengths, recipe.batch_size, rng)
        for step, batch in enumerate(iterate(epoch_set, order), 1):
            batch = batch.to(device)
            loss_value = train_step(model, batch, optimizer, recipe, device, precision, trainable, anchors,
                                    objective)
            scheduler.step()
            if not math.isfinite(loss_value):
                result.diverged = True
                break
            loss_sum += loss_value * len(batch)
            seen += len(batch)
            rate = seen / (time.perf_counter() - epoch_start)
            try:
                for callback in callbacks:
                    callback.on_step(epoch, step, loss_sum / seen, rate)
            except StopTraining as stop:  # the budget ended mid-epoch: this part-epoch is evaluated, then done
                result.stopped_by, finished = stop.reason, True
                break
        if result.diverged:
            break
        train_seconds = time.perf_counter() - epoch_start

        val = evaluate(model, val_set, device, precision, objective) if val_set is not None else None
        scores = {"val_accuracy": None, "val_macro_f1": None,
                  **{f"val_{k}": v for k, v in (val.metrics.items() if val is not None else ())}}
        record = EpochRecord(epoch, loss_sum / seen, val.loss if val is not None else math.nan,
                             learning_rate=scheduler.get_last_lr()[0], train_samples_per_s=seen / train_seconds,
                             seconds=time.perf_counter() - epoch_start, **scores)
        result.history.append(record)
        # Ties on the metric go to the lower validation loss (e.g. two epochs both at 100% accuracy). Without
        # validation every epoch is the best so far: the last one is kept.
        score = ((record.metric(recipe.metric) * (1 if higher_is_better else -1), -record.val_loss)
                 if val is not None else (float(epoch), 0.0))
        is_best = score > best_score
        if is_best:
            best_score, result.best_epoch, epochs_without_gain = score, epoch, 0
            result.best_val_predictions = val.probabilities if val is not None else None
            # Trainable tensors and buffers change (BatchNorm's running statistics are buffers): copying them
            # restores the best epoch exactly. Frozen parameters never change, so they are not copied.
            best_state = {name: p.detach().clone() for name, p in model.named_parameters() if name in trainable_names}
            best_state.update({name: b.detach().clone() for name, b in model.named_buffers()})
        else:
            epochs_without_gain += 1
        # Every callback sees the epoch, even after one has asked to stop (a pruner, a spent budget): the epoch
        # that ended a run is recorded like any other.
        for callback in callbacks:
            try:
                callback.on_epoch_end(record, is_best)
            except StopTraining as stop:
                result.stopped_by = result.stopped_by or stop.reason
                finished = True
        if not finished and recipe.patience and epochs_without_gain >= recipe.patience and epoch < recipe.epochs:
            result.stopped_early = finished = True
        if checkpoint is not None:
            checkpoint.save(epoch, model, optimizer, scheduler, rng, best_state, {
                "history": [r.__dict__ for r in result.history], "best_epoch": result.best_epoch,
                "best_score": list(best_score), "epochs_without_gain": epochs_without_gain,
                "finished": finished or epoch == recipe.epochs, "stopped_early": result.stopped_early,
                "stopped_by": result.stopped_by})
        if finished:
            break

    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    for param in trainable:
        param.requires_grad_(True)
    result.seconds = time.perf_counter() - started
    for callback in callbacks:
        callback.on_train_end(result)
    return result


def train_step(model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer, recipe: Recipe,
               device: torch.device, precision: str, trainable: list[torch.nn.Parameter],
               anchors: dict[int, torch.Tensor] | None = None, objective: Objective = CLASSIFICATION) -> float:
    """One optimizer step on one batch (the training loop and the range test share it); returns the loss."""
    with autocast(device, precision):
        outputs = model(**batch.inputs)
    loss = objective.loss(outputs, batch.labels, recipe.label_smoothing)
    loss.backward()
    if recipe.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(trainable, recipe.grad_clip)
    optimizer.step()
    if anchors:
        _pull_toward(anchors, optimizer, recipe.l2sp)
    optimizer.zero_grad(set_to_none=True)  # free the gradients now, not at the next backward
    return loss.item()


def unfrozen_depth(epoch: int) -> int:
    """Gradual unfreezing: how many layers below the head train in ``epoch`` (1-based): the head alone in
    the first, then one layer more each epoch."""
    return epoch - 1


def _gradual_depths(model: nn.Module, trainable_names: set[str]) -> dict[str, int]:
    """Each trainable parameter's depth below the top (the head 0, the top layer 1, ...); the model says."""
    if not hasattr(model, "parameter_depths"):
        raise ValueError(f"Gradual unfreezing needs to know the layer of each parameter; a "
                         f"{type(model).__name__} does not say (no parameter_depths).")
    depths = model.parameter_depths()
    return {name: depths.get(name, 0) for name in trainable_names}


def _unfreeze_for_epoch(model: nn.Module, depths: dict[str, int], epoch: int) -> None:
    """Of the parameters the recipe trains, only those within ``unfrozen_depth(epoch)`` of the top train now.
    The optimizer holds them all; it skips a parameter without a gradient, so frozen ones do not move."""
    for name, param in model.named_parameters():
        if name in depths:
            param.requires_grad_(depths[name] <= unfrozen_depth(epoch))


def _pretrained_anchors(model: nn.Module) -> dict[int, torch.Tensor]:
    """The starting values of the trainable pretrained parameters (the model says which are pretrained)."""
    names = set(getattr(model, "pretrained_parameter_names", lambda: [])())
    return {id(p): p.detach().clone() for name, p in model.named_parameters() if p.requires_grad and name in names}


@torch.no_grad()
def _pull_toward(anchors: dict[int, torch.Tensor], optimizer: torch.optim.Optimizer, strength: float) -> None:
    """L2-SP, decoupled like AdamW's weight decay: each step moves a pretrained weight back toward its
    starting value by lr x strength of the distance, where weight decay would move it toward zero."""
    for group in optimizer.param_groups:
        weight = min(1.0, group["lr"] * strength)
        for param in group["params"]:
            anchor = anchors.get(id(param))
            if anchor is not None:
                param.lerp_(anchor, weight)


def predict_outputs(model: nn.Module, data: Examples, device: torch.device, precision: str,
                    objective: Objective = CLASSIFICATION, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """The objective's predictions for every example, in the order of ``data`` (class probabilities, or one
    column of standardized values); batches sorted by length."""
    # Moved outside inference mode: parameters moved to a device inside it become inference tensors, which
    # can never train again (a model predicted with, then fine-tuned further).
    model.to(device)
    model.eval()
    out: np.ndarray | None = None
    with torch.inference_mode():
        for batch in iterate(data, inference_order(data.lengths, batch_size)):
            batch = batch.to(device)
            with autocast(device, precision):
                outputs = model(**batch.inputs)
            predicted = objective.predictions(outputs).cpu().numpy()
            if out is None:
                out = np.zeros((len(data), predicted.shape[1]), dtype=np.float32)
            out[batch.indices] = predicted
    assert out is not None
    return out


def predict_probabilities(model: nn.Module, data: Examples, device: torch.device, precision: str,
                          batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Class probabilities for every example, in the order of ``data``."""
    return predict_outputs(model, data, device, precision, CLASSIFICATION, batch_size)


def evaluate(model: nn.Module, data: Examples, device: torch.device, precision: str,
             objective: Objective = CLASSIFICATION) -> Evaluation:
    """Loss and metrics on labelled data."""
    assert data.label_ids is not None
    predictions = predict_outputs(model, data, device, precision, objective)
    loss, metrics = objective.score(predictions, np.asarray(data.label_ids))
    return Evaluation(loss, predictions, metrics)
