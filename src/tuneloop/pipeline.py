"""What the API and the continual, tuning and report layers build runs with: a task read from data
(``load_task``, ``task_of_run``), one run trained and recorded (``train_run``), a recipe cross-validated, refit
on every labelled example, or runs combined into an ensemble or a weight soup. Nothing here imports the public
face (``tuneloop.api``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop.config import LOWER_IS_BETTER, Recipe
from tuneloop.errors import ConfigError, DataError, ModelError
from tuneloop.models import get_adapter
from tuneloop.models.ensemble import Ensemble, EnsembleAdapter, write_ensemble
from tuneloop.run import METRICS_FILE, RECIPE_FILE, Run
from tuneloop.store.atomic import write_dir_atomic, write_text_atomic
from tuneloop.store.workspace import RunRecord, Workspace
from tuneloop.tasks import LABELS_FILE, DataOptions, Task, modality_of, task_class, training_precision
from tuneloop.training.checkpoint import EpochCheckpoint
from tuneloop.training.device import pick_device
from tuneloop.training.loop import Callback, EpochRecord, predict_outputs, train
from tuneloop.training.loop import evaluate as evaluate_model
from tuneloop.training.metrics import roc_auc


class _RecordEpochs(Callback):
    main_phase_only = True

    def __init__(self, workspace: Workspace, run_id: str):
        self.workspace, self.run_id = workspace, run_id

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None:
        if math.isfinite(record.val_loss):  # a final fit on every labelled example has no validation to record
            self.workspace.record_epoch(self.run_id, record.__dict__)

    def on_resume(self, history: list[EpochRecord]) -> None:
        for record in history:
            self.workspace.record_epoch(self.run_id, record.__dict__)


def option_problems(recipe: Recipe, val_fraction: float) -> list[str]:
    problems = recipe.problems()
    if not (isinstance(val_fraction, (int, float)) and 0 < val_fraction < 1):
        problems.append(f"The 'val_fraction' parameter must be a float in the range (0, 1). Got {val_fraction!r} "
                        "instead.")
    return problems


def check_options(recipe: Recipe, val_fraction: float) -> None:
    problems = option_problems(recipe, val_fraction)
    if problems:
        raise ConfigError(problems)


def train_run(store: Workspace, task: Task, recipe: Recipe, callbacks: Sequence[Callback] = (),
              checkpoint: EpochCheckpoint | None = None, *, cache_features: bool = True,
              checkpoint_for: Callable[[str], EpochCheckpoint] | None = None,
              resumes: str | None = None) -> tuple[Run, Any]:
    """Train one run of ``recipe`` on ``task``, recorded in ``store``; returns the run and the TrainResult.
    Every finished epoch is saved in ``checkpoint`` (or in ``checkpoint_for(run id)``), and training continues
    from there where an epoch is saved; ``resumes`` names the interrupted run it continues, for the record.

    The best epoch's model is saved as the run's artifact folder, except for a run that a callback stopped
    for pruning: that one is recorded with its metrics and without a model (disk stays bounded).
    """
    recipe = recipe.for_objective(task.objective.name)  # the run records its concrete metric
    device = pick_device()
    precision = training_precision(task, recipe.precision, device, recipe)
    prepared = _seeded_prepare(task, recipe, device, precision, cache_features)
    adapter = get_adapter(task.adapter_name)
    run_id = store.start_run(task=task.kind, adapter=adapter.name, backbone=task.backbone,
                             train_source=task.train.source, val_source=task.val.source,
                             train_fingerprint=task.train.fingerprint(),
                             val_fingerprint=task.val.fingerprint(), n_train=len(task.train), n_val=len(task.val),
                             recipe=recipe.to_dict(), data_options=stored_options(task))
    if checkpoint is None and checkpoint_for is not None:
        checkpoint = checkpoint_for(run_id)
    try:
        prepared, phase_seconds = _first_phase(prepared, device, precision, callbacks, checkpoint)
        network, trainable = prepared.network, prepared.trainable
        train_set, val_set = prepared.train_set, prepared.val_set
        result = train(trainable, train_set, val_set, recipe, device, precision,
                       [*callbacks, _RecordEpochs(store, run_id)], checkpoint, task.objective)
        if not result.history:
            raise ModelError(f"Training diverged in the first epoch (the loss became NaN or infinite) at learning "
                             f"rate {recipe.learning_rate}. Try a lower --learning-rate.")
        if result.best_val_predictions is None:  # resumed past its best epoch: predict again, with its weights
            result.best_val_predictions = predict_outputs(trainable, val_set, device, precision, task.objective)
        best = result.best
        metrics = {**{f"val_{name}": best.metric(name) for name in task.objective.metrics},
                   "val_loss": best.val_loss,
                   "train_loss": best.train_loss, "best_epoch": result.best_epoch, "epochs_run": len(result.history),
                   "stopped_early": result.stopped_early, "stopped_by": result.stopped_by,
                   "resumed_from_epoch": result.resumed_from_epoch, **({"resumes_run": resumes} if resumes else {}),
                   "cached_inputs": prepared.cached, "not_cached": prepared.not_cached,
                   "diverged": result.diverged, "seconds": round(result.seconds + phase_seconds, 3),
                   "pairs_seconds": round(phase_seconds, 3), "precision": precision,
                   "device": device.type, **task.baseline(), **_val_roc_auc(task, result, val_set),
                   "train_samples_per_s": float(np.mean([e.train_samples_per_s for e in result.history]))}
        if result.stopped_by != "pruned":  # what its kind measures at the end
            metrics.update(task.final_scores(trainable, prepared.preprocessor, device, precision, metrics))
        if result.stopped_by == "pruned":
            store.fail_run(run_id, f"stopped: {result.stopped_by}", status="pruned", metrics=metrics)
            return Run(run_id, store.artifact_dir(run_id), recipe, metrics, task.classes, store.epochs(run_id)), result

        _save_model(store, run_id, adapter, network, prepared.preprocessor, task.classes, recipe, metrics)
        store.complete_run(run_id, metrics, result.best_epoch, result.seconds)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        store.fail_run(run_id, "".join(traceback.format_exception_only(exc)).strip(), status=status)
        raise
    run = Run(run_id, store.artifact_dir(run_id), recipe, metrics, task.classes, store.epochs(run_id),
              (network.cpu().eval(), prepared.preprocessor))
    return run, result


ATTEMPT_FILE = "run-id"  # in a trial's checkpoint folder: the run of the attempt that writes its checkpoints


def trial_checkpoint(store: Workspace, folder: Path) -> tuple[Callable[[str], EpochCheckpoint], str | None]:
    """For ``train_run``: the checkpoint in ``folder`` of a trial's attempt (it records the attempt's run), and
    the run of an earlier attempt whose process was lost (killed, or on a machine whose lease ran out), whose
    saved epochs this one continues from. That run, if still recorded as running, is marked interrupted: only
    the caller, which holds the study, decides that an attempt is lost."""
    try:
        lost: str | None = (folder / ATTEMPT_FILE).read_text().strip()
    except OSError:
        lost = None
    status = store.run_status(lost) if lost else None
    if status == "running":
        store.fail_run(lost, "its process was lost mid-run; a new attempt continues from its last saved epoch",
                       status="interrupted")
    elif status != "interrupted":
        lost = None

    def checkpoint_for(run_id: str) -> EpochCheckpoint:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / ATTEMPT_FILE, run_id)
        return EpochCheckpoint(folder)

    return checkpoint_for, lost


def _seeded_prepare(task: Any, recipe: Recipe, device: torch.device, precision: str, cache_features: bool = True
                    ) -> Any:
    """``task.prepare`` for ``recipe``, its new layers' initial weights drawn from ``recipe.weights_seed`` and
    what training draws afterwards (dropout) from ``recipe.seed``."""
    torch.manual_seed(recipe.weights_seed)
    prepared = task.prepare(recipe, device, precision, cache_features=cache_features)
    if recipe.init_seed != -1:  # the weights came from init_seed; dropout and the rest of training from seed
        torch.manual_seed(recipe.seed)
    return prepared


def _first_phase(prepared: Any, device: torch.device, precision: str, callbacks: Sequence[Callback],
                 checkpoint: EpochCheckpoint | None) -> tuple[Any, float]:
    """Train a run's first phase where it has one (contrastive tuning on pairs, checkpointed apart from the
    rest); returns what the rest of the run trains, and the phase's seconds."""
    if prepared.first_phase is None:
        return prepared, 0.0
    phase = prepared.first_phase
    shown = [c for c in callbacks if not c.main_phase_only]
    part = EpochCheckpoint(checkpoint.folder / phase.name) if checkpoint is not None else None
    result = train(phase.trainable, phase.train_set, phase.val_set, phase.recipe, device, precision, shown, part,
                   phase.objective)
    if result.diverged:
        raise ModelError(f"Contrastive tuning on pairs diverged (the loss became NaN or infinite) at learning rate "
                         f"{phase.recipe.learning_rate}.")
    return phase.then(), result.seconds


@dataclass(frozen=True)
class CrossValidation:
    """A recipe scored by k-fold cross-validation over every labelled example of a task, at the one epoch that
    scores best over all folds together (each fold trains every epoch of the recipe and is validated on the
    examples it left out, so the folds' curves add up to one curve over every example)."""

    metrics: dict[str, float]  # val_<metric> and val_loss over all folds' validation examples, at best_epoch
    n: int
    k: int
    best_epoch: int
    seconds: float


def cross_validate(task: Any, recipe: Recipe, k: int, seed: int, callbacks: Sequence[Callback] = ()
                   ) -> CrossValidation | None:
    """``recipe`` trained k times on the task's pooled examples, each time validated after every epoch on the
    fold left out (None where the rarest class has too few examples for ``k`` folds). Nothing is recorded in
    a workspace: it is a measurement, not a model.

    Accuracy, MAE and the loss over all examples are the folds' values weighted by their sizes, exactly; RMSE
    is the square root of the weighted mean square; macro-F1 and R² are the weighted means of the folds'."""
    recipe = recipe.for_objective(task.objective.name).replace(patience=0)  # every epoch of every fold
    splits = task.folds(k, seed)
    if not splits:
        return None
    device = pick_device()
    started = time.perf_counter()
    curves, sizes = [], []
    for train_rows, val_rows in splits:
        fold = task.fold(train_rows, val_rows)
        precision = training_precision(fold, recipe.precision, device, recipe)
        prepared = _seeded_prepare(fold, recipe, device, precision)
        prepared, _ = _first_phase(prepared, device, precision, callbacks, None)
        result = train(prepared.trainable, prepared.train_set, prepared.val_set, recipe, device, precision,
                       [c for c in callbacks if not c.main_phase_only], None, fold.objective)
        if not result.history:
            raise ModelError(f"Training diverged in a fold of cross-validation at learning rate "
                             f"{recipe.learning_rate}.")
        curves.append(result.history)
        sizes.append(len(val_rows))
    epochs = min(len(curve) for curve in curves)  # a fold that diverged late ends the common curve
    weights = np.asarray(sizes, dtype=np.float64) / sum(sizes)
    pooled = []
    for epoch in range(epochs):
        at = [curve[epoch] for curve in curves]
        point = {"val_loss": float(np.dot(weights, [r.val_loss for r in at]))}
        for name in task.objective.metrics:
            values = np.asarray([r.metric(name) for r in at], dtype=np.float64)
            point[f"val_{name}"] = (float(np.sqrt(np.dot(weights, values ** 2))) if name == "rmse"
                                    else float(np.dot(weights, values)))
        pooled.append(point)
    sign = -1.0 if recipe.metric in LOWER_IS_BETTER else 1.0
    best = max(range(epochs), key=lambda e: (sign * pooled[e][f"val_{recipe.metric}"] if recipe.metric != "loss"
                                             else -pooled[e]["val_loss"], -pooled[e]["val_loss"]))
    return CrossValidation(pooled[best], sum(sizes), len(splits), best + 1, time.perf_counter() - started)


def refit_run(store: Workspace, task: Any, recipe: Recipe, estimate: dict[str, Any],
              callbacks: Sequence[Callback] = (), checkpoint: EpochCheckpoint | None = None) -> Run:
    """``recipe`` trained on every labelled example of ``task`` (training and validation together) for its
    epochs, the last one kept: the final model of a study whose validation set was too small to keep apart.
    Nothing is left to validate it on, so its recorded scores are ``estimate``'s (val_<metric> as measured
    by cross-validation or on the validation set when the recipe was chosen; ``estimated_by`` says which)."""
    recipe = recipe.for_objective(task.objective.name)
    everything = task.fold(np.arange(len(task.train) + len(task.val)))
    device = pick_device()
    precision = training_precision(everything, recipe.precision, device, recipe)
    prepared = _seeded_prepare(everything, recipe, device, precision)
    adapter = get_adapter(everything.adapter_name)
    run_id = store.start_run(task=everything.kind, adapter=adapter.name, backbone=everything.backbone,
                             train_source=task.train.source, val_source=f"{task.val.source} (trained on too)",
                             train_fingerprint=task.train.fingerprint(),  # as read: so it can be read again
                             val_fingerprint=task.val.fingerprint(), n_train=len(everything.train), n_val=0,
                             recipe=recipe.to_dict(), data_options=stored_options(task))
    try:
        prepared, phase_seconds = _first_phase(prepared, device, precision, callbacks, checkpoint)
        result = train(prepared.trainable, prepared.train_set, None, recipe, device, precision,
                       [c for c in callbacks if not c.main_phase_only], checkpoint, everything.objective)
        if not result.history:
            raise ModelError(f"Training on every labelled example diverged at learning rate {recipe.learning_rate}.")
        metrics = {**estimate, "train_loss": result.history[-1].train_loss, "best_epoch": len(result.history),
                   "epochs_run": len(result.history), "refit_on": len(everything.train),
                   "cached_inputs": prepared.cached, "seconds": round(result.seconds + phase_seconds, 3),
                   "pairs_seconds": round(phase_seconds, 3), "precision": precision, "device": device.type,
                   **task.baseline()}
        _save_model(store, run_id, adapter, prepared.network, prepared.preprocessor, everything.classes, recipe,
                    metrics)
        store.complete_run(run_id, metrics, len(result.history), metrics["seconds"])
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        store.fail_run(run_id, "".join(traceback.format_exception_only(exc)).strip(), status=status)
        raise
    return Run(run_id, store.artifact_dir(run_id), recipe, metrics, everything.classes, [],
               (prepared.network.cpu().eval(), prepared.preprocessor))


def _save_model(store: Workspace, run_id: str, adapter: Any, network: torch.nn.Module, preprocessor: Any,
                classes: list[str], recipe: Recipe, metrics: dict[str, Any]) -> None:
    """The run's model folder, written whole: weights and preprocessing, classes, recipe and metrics (and the
    model card of an adapter that writes one: what it was trained on, how, and its scores)."""

    def fill(folder: Path) -> None:
        adapter.save(network, preprocessor, str(folder))
        (folder / LABELS_FILE).write_text(json.dumps(classes, indent=2))
        (folder / RECIPE_FILE).write_text(recipe.to_yaml())
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        if hasattr(adapter, "write_card"):
            adapter.write_card(folder, store.run(run_id), recipe, metrics)

    write_dir_atomic(store.artifact_dir(run_id), fill)


def ensemble_run(store: Workspace, task: Any, run_ids: Sequence[str], estimate: dict[str, Any]) -> Run:
    """The models of ``run_ids`` (final fits on every labelled example of ``task``, the lead first) saved as one
    run that predicts their average: class probabilities, or a regressor's values. Nothing is left to score it
    on, so its recorded scores are ``estimate``'s (its lead's, as the study chose it)."""
    members = [Run.from_dir(store.artifact_dir(run_id), run_id) for run_id in run_ids]
    lead = members[0]
    everything = task.fold(np.arange(len(task.train) + len(task.val)))
    metrics = {**estimate, "ensemble_of": list(run_ids), "refit_on": len(everything.train), "seconds": 0.0}
    average = "values" if task.objective.predicts_values else "probabilities"
    run_id = store.start_run(task=everything.kind, adapter=lead.adapter, backbone=everything.backbone,
                             train_source=task.train.source, val_source=f"{task.val.source} (trained on too)",
                             train_fingerprint=task.train.fingerprint(),  # as read: so it can be read again
                             val_fingerprint=task.val.fingerprint(), n_train=len(everything.train), n_val=0,
                             recipe=lead.recipe.to_dict(), data_options=stored_options(task))

    try:
        _save_ensemble(store, run_id, members, average, lead.classes, lead.recipe, metrics)
        store.complete_run(run_id, metrics, None, 0.0)
    except BaseException as exc:
        store.fail_run(run_id, "".join(traceback.format_exception_only(exc)).strip())
        raise
    return Run(run_id, store.artifact_dir(run_id), lead.recipe, metrics, lead.classes, [])


def _save_ensemble(store: Workspace, run_id: str, members: Sequence[Run], average: str, classes: list[str],
                   recipe: Recipe, metrics: dict[str, Any]) -> None:
    """The run's folder, written whole: the ``members``' model folders predicting together (``average``: their
    probabilities or values), with the classes, recipe and metrics."""

    def fill(folder: Path) -> None:
        write_ensemble(folder, [member.path for member in members], average)
        (folder / LABELS_FILE).write_text(json.dumps(classes, indent=2))
        (folder / RECIPE_FILE).write_text(recipe.to_yaml())
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2))

    write_dir_atomic(store.artifact_dir(run_id), fill)


def soup_run(store: Workspace, task: Any, run_ids: Sequence[str], recipe: Recipe) -> tuple[Run, np.ndarray]:
    """The runs of one recipe, started from the same weights, combined into one model, scored on the task's
    validation data and saved as a run of its own: their uniform weight average (a model soup, Wortsman et al.
    2022: runs fine-tuned from the same weights average into one model, often better than each), or, where the
    task averages predictions and that scores higher on validation, the runs predicting together (their class
    probabilities or values averaged: one forward pass a run, but it never depends on the runs sharing a basin,
    Lakshminarayanan et al. 2017). Returns the run and its validation predictions."""
    recipe = recipe.for_objective(task.objective.name)
    members = [Run.from_dir(store.artifact_dir(run_id), run_id) for run_id in run_ids]
    adapter = get_adapter(members[0].adapter)
    loaded = [adapter.load(str(member.path)) for member in members]
    networks, preprocessor = [network for network, _ in loaded], loaded[0][1]
    states = [network.state_dict() for network in networks]
    averaged = {name: torch.stack([s[name].float() for s in states]).mean(0).to(tensor.dtype)
                if tensor.is_floating_point() else tensor for name, tensor in states[0].items()}
    soup = copy.deepcopy(networks[0])
    soup.load_state_dict(averaged)
    device = pick_device()
    precision = training_precision(task, recipe.precision, device, recipe)
    started = time.perf_counter()
    # The validation examples as the saved model reads them (token ids, pixels, rows): nothing cached.
    val_set = task.prepare(recipe.replace(lora_rank=0, contrastive=0), device, precision,
                           cache_features=False).val_set
    scored, network = evaluate_model(soup, val_set, device, precision, task.objective), soup
    average = "values" if task.objective.predicts_values else "probabilities"
    together = None
    if task.averages_predictions:
        together = Ensemble(networks, average)
        voted = evaluate_model(together, val_set, device, precision, task.objective)
        if combine_by(scored, voted, recipe.metric) == "predictions":
            scored, network = voted, together
    combined = "averaged_predictions_of" if network is together else "soup_of"
    metrics = {**{f"val_{name}": value for name, value in scored.metrics.items()}, "val_loss": scored.loss,
               combined: list(run_ids), "seconds": round(time.perf_counter() - started, 3),
               "precision": precision, "device": device.type, **task.baseline()}
    if task.objective.name == "classification":
        area = roc_auc(np.asarray(val_set.label_ids), scored.probabilities)
        metrics.update({} if area is None else {"val_roc_auc": area})
    run_id = store.start_run(task=task.kind, adapter=EnsembleAdapter.name if network is together else adapter.name,
                             backbone=task.backbone, train_source=task.train.source, val_source=task.val.source,
                             train_fingerprint=task.train.fingerprint(), val_fingerprint=task.val.fingerprint(),
                             n_train=len(task.train), n_val=len(val_set), recipe=recipe.to_dict(),
                             data_options=stored_options(task))
    try:
        if network is together:
            _save_ensemble(store, run_id, members, average, task.classes, recipe, metrics)
        else:
            _save_model(store, run_id, adapter, network, preprocessor, task.classes, recipe, metrics)
        store.complete_run(run_id, metrics, None, metrics["seconds"])
    except BaseException as exc:
        store.fail_run(run_id, "".join(traceback.format_exception_only(exc)).strip())
        raise
    run = Run(run_id, store.artifact_dir(run_id), recipe, metrics, task.classes, [],
              (network.cpu().eval(), preprocessor))
    return run, scored.probabilities


def combine_by(weights: Any, predictions: Any, metric: str) -> str:
    """How runs are combined, from the validation evaluations of their weight average and of their averaged
    predictions: "predictions" where those score higher by ``metric``, else "weights" (one model to run)."""
    def score(evaluation: Any) -> float:  # higher is better
        value = evaluation.loss if metric == "loss" else evaluation.metrics[metric]
        return -value if metric in LOWER_IS_BETTER else value

    return "predictions" if score(predictions) > score(weights) else "weights"


def task_of_run(record: RunRecord, data: Any = None, val: Any = None) -> Any:
    """The task a run trained on: its data read again as the run read it (the options it recorded), or
    ``data`` and ``val`` where given, checked against the fingerprints it recorded."""
    options = record.data_options
    if data is None and options is None:
        raise ConfigError([f"run {record.id} does not record how its data was read (an older tuneloop trained it):"
                           " give its training data with --data (and --val)."])
    options = options or {}
    source = data if data is not None else record.train_source
    held = val if val is not None else (record.val_source if options.get("val_given") else None)
    if data is None and not Path(record.train_source).exists():
        raise DataError(f"run {record.id} was trained on {record.train_source}, which is not here to read again: "
                        "give its training data with --data (and --val).")
    read_as = DataOptions.from_dict(options, seed=record.recipe.get("seed", 0))
    task = load_task(source, held, read_as, model=record.backbone)
    if (task.train.fingerprint(), task.val.fingerprint()) != (record.train_fingerprint, record.val_fingerprint):
        if data is None:
            raise DataError(f"{record.train_source} has changed since run {record.id} read it (its fingerprint "
                            "differs): give the data it was trained on with --data (and --val).")
        raise DataError(f"{getattr(data, 'source', data)}: not the data run {record.id} was trained and validated "
                        "on (the fingerprints differ).")
    return task


def load_task(data: Any, val: Any, options: DataOptions, *, model: str | None = None,
              keep_classes: bool = False) -> Task:
    """The checked task for ``data`` read as ``options`` say; every check that can fail on bad input runs here,
    before any write. The task keeps its options (the kind of data made concrete), recorded with each run.

    ``keep_classes``: ``model`` is a saved run being updated; its classes stay, in their order, and the data's
    new classes are added after them (its head grows)."""
    modality = modality_of(data, options.task, options.text_col, options.image_col)
    loaded = task_class(modality).read(data, val, options, model=model, keep_classes=keep_classes)
    loaded.data_options = dataclasses.replace(options, task=modality, val_given=val is not None)
    return loaded


def study_task(options: dict[str, Any]) -> Task:
    """The task of a study, read as its options say (``tune`` stores them; its workers read them too)."""
    seed = Recipe.from_dict(options["recipe"]).seed
    return load_task(options["data"], options["val"], DataOptions.from_dict(options, seed=seed),
                     model=options["model"])


def stored_options(task: Any) -> dict[str, Any] | None:
    """How ``task``'s data was read, as a run records it (None for a task made in memory without options)."""
    return task.data_options.to_dict() if task.data_options is not None else None


def _val_roc_auc(task: Any, result: Any, val_set: Any) -> dict[str, float]:
    """A classifier's validation ROC AUC from its best epoch's predictions (where this call trained it)."""
    if task.objective.name != "classification" or result.best_val_predictions is None:
        return {}
    area = roc_auc(np.asarray(val_set.label_ids), result.best_val_predictions)
    return {} if area is None else {"val_roc_auc": area}


def range_test(task: Task, recipe: Recipe, finder):
    """The range test of ``recipe`` on ``task`` (of a recipe with contrastive tuning: on the untuned encoder)."""
    recipe = recipe.replace(contrastive=0)
    torch.manual_seed(recipe.seed)
    device = pick_device()
    precision = training_precision(task, recipe.precision, device, recipe)
    prepared = task.prepare(recipe, device, precision)
    return finder(prepared.trainable, prepared.train_set, recipe, device, precision, objective=task.objective)
