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
import torch.nn.functional as F
from torch import nn

from tuneloop.config import Recipe
from tuneloop.data.batches import Batch, Examples, PerEpoch, inference_order, iterate, training_order
from tuneloop.training.checkpoint import EpochCheckpoint
from tuneloop.training.device import autocast
from tuneloop.training.fast_dropout import cpu_fast_dropout
from tuneloop.training.metrics import classification_metrics
from tuneloop.training.schedule import make_optimizer, make_scheduler

EVAL_BATCH = 64


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    learning_rate: float
    train_samples_per_s: float
    seconds: float

    def metric(self, name: str) -> float:
        return {"loss": self.val_loss, "accuracy": self.val_accuracy, "macro_f1": self.val_macro_f1}[name]


class StopTraining(Exception):
    """Raised by a callback at the end of an epoch to end training there (pruning, a spent budget)."""

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

    @property
    def best(self) -> EpochRecord:
        return self.history[self.best_epoch - 1]


class Callback:
    """Hooks the loop calls; override the ones you need (progress display, recording to the database)."""

    def on_train_start(self, total_steps: int, num_examples: int, epochs: int) -> None: ...

    def on_step(self, epoch: int, step: int, loss: float, samples_per_s: float) -> None: ...

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None: ...

    def on_resume(self, history: list[EpochRecord]) -> None:
        """Training continues from a checkpoint; ``history`` holds the epochs restored from it."""

    def on_train_end(self, result: TrainResult) -> None: ...


@dataclass(frozen=True)
class Evaluation:
    loss: float
    probabilities: np.ndarray  # examples x classes, in the order of the Encoded set
    metrics: dict[str, float]


def train(model: nn.Module, train_set: Examples, val_set: Examples, recipe: Recipe, device: torch.device,
          precision: str, callbacks: list[Callback] | tuple[Callback, ...] = (),
          checkpoint: EpochCheckpoint | None = None) -> TrainResult:
    """Train ``model`` in place by ``recipe``; afterwards it holds the weights of the best validation epoch.

    With ``checkpoint``, every finished epoch is saved there, and training continues from the newest saved
    epoch if there is one (same batches, same random draws: the result is the one an uninterrupted run gives).
    """
    # On a CPU, drawing dropout masks is a large share of each step; draw them the cheap way.
    with cpu_fast_dropout(model) if device.type == "cpu" else contextlib.nullcontext():
        return _train(model, train_set, val_set, recipe, device, precision, callbacks, checkpoint)


def _train(model: nn.Module, train_set: Examples, val_set: Examples, recipe: Recipe, device: torch.device,
           precision: str, callbacks: list[Callback] | tuple[Callback, ...],
           checkpoint: EpochCheckpoint | None) -> TrainResult:
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
    higher_is_better = recipe.metric != "loss"
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
            loss_value = train_step(model, batch, optimizer, recipe, device, precision, trainable, anchors)
            scheduler.step()
            if not math.isfinite(loss_value):
                result.diverged = True
                break
            loss_sum += loss_value * len(batch)
            seen += len(batch)
            rate = seen / (time.perf_counter() - epoch_start)
            for callback in callbacks:
                callback.on_step(epoch, step, loss_sum / seen, rate)
        if result.diverged:
            break
        train_seconds = time.perf_counter() - epoch_start

        val = evaluate(model, val_set, device, precision)
        record = EpochRecord(epoch, loss_sum / seen, val.loss, val.metrics["accuracy"], val.metrics["macro_f1"],
                             scheduler.get_last_lr()[0], seen / train_seconds, time.perf_counter() - epoch_start)
        result.history.append(record)
        # Ties on the metric go to the lower validation loss (e.g. two epochs both at 100% accuracy).
        score = (record.metric(recipe.metric) * (1 if higher_is_better else -1), -record.val_loss)
        is_best = score > best_score
        if is_best:
            best_score, result.best_epoch, epochs_without_gain = score, epoch, 0
            # Only trainable tensors change, so only they need copying to restore the best epoch later.
            best_state = {name: p.detach().clone() for name, p in model.named_parameters() if name in trainable_names}
        else:
            epochs_without_gain += 1
        try:
            for callback in callbacks:
                callback.on_epoch_end(record, is_best)
        except StopTraining as stop:
            result.stopped_by = stop.reason
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
               anchors: dict[int, torch.Tensor] | None = None) -> float:
    """One optimizer step on one batch (the training loop and the range test share it); returns the loss."""
    with autocast(device, precision):
        logits = model(**batch.inputs)
    # The loss in fp32: bf16 cross-entropy loses precision exactly where gradients are small.
    loss = F.cross_entropy(logits.float(), batch.labels, label_smoothing=recipe.label_smoothing)
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


@torch.inference_mode()
def predict_probabilities(model: nn.Module, data: Examples, device: torch.device, precision: str,
                          batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Class probabilities for every example, in the order of ``data``; batches sorted by length."""
    model.to(device)
    model.eval()
    num_classes = None
    out: np.ndarray | None = None
    for batch in iterate(data, inference_order(data.lengths, batch_size)):
        batch = batch.to(device)
        with autocast(device, precision):
            logits = model(**batch.inputs)
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        if out is None:
            num_classes = probs.shape[1]
            out = np.zeros((len(data), num_classes), dtype=np.float32)
        out[batch.indices] = probs
    assert out is not None
    return out


def evaluate(model: nn.Module, data: Examples, device: torch.device, precision: str) -> Evaluation:
    """Loss and metrics on labelled data."""
    assert data.label_ids is not None
    probabilities = predict_probabilities(model, data, device, precision)
    true = np.asarray(data.label_ids)
    picked = probabilities[np.arange(len(true)), true]
    loss = float(-np.log(np.clip(picked, 1e-12, None)).mean())
    metrics = classification_metrics(true, probabilities.argmax(1), probabilities.shape[1])
    return Evaluation(loss, probabilities, metrics)
