"""The Python API, the public face: fit, tune, evaluate, predict, runs, gc and the demo, composed from the
library below it (``run``, ``pipeline``, ``tuning``, ``continual``), none of which imports this module.

Every function checks all of its input (data files, recipe) before it touches the workspace, so bad
input leaves nothing behind.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.config import Recipe
from tuneloop.data import Examples
from tuneloop.data.files import write_table
from tuneloop.errors import ConfigError, RunNotFoundError, TuneloopError
from tuneloop.pipeline import (
    check_options,
    cross_validate,
    ensemble_run,
    load_task,
    option_problems,
    range_test,
    refit_run,
    soup_run,
    study_task,
    task_of_run,
    train_run,
    trial_checkpoint,
)
from tuneloop.run import EvaluationReport, Predictions, Run, load_run
from tuneloop.store.workspace import RunRecord, StudyLease, Workspace
from tuneloop.tasks import DataOptions, Task, check_knobs, modality_of
from tuneloop.tracking.mlflow_export import (
    Exported,
    MlflowExporter,
    StudyTracker,
    exported_as,
    open_exporter,
    track_run,
)
from tuneloop.tracking.target import parse_track, track_problems
from tuneloop.training.checkpoint import EpochCheckpoint
from tuneloop.training.loop import Callback


def fit(data: Any, val: Any = None, *, task: str = "auto", text_col: str | None = None,
        label_col: str | None = None, image_col: str | None = None, image_size: int | None = None,
        model: str | None = None, recipe: Recipe | None = None, workspace: str | os.PathLike | None = None,
        val_fraction: float = 0.2, callbacks: Sequence[Callback] = (), time_col: str | None = None,
        series_col: str | None = None, horizon: int | None = None, season: int | None = None,
        store: str | None = None, track: str | None = None, **recipe_changes: Any) -> Run:
    """Train a model on ``data`` and save it as a run in the workspace: a fine-tuned text encoder for texts,
    an MLP for table rows (a classifier, or a regressor of a numeric target), an image network for images
    (``task`` "text", "tabular" or "image"; "auto" tells by the data: a folder is images).

    For images, ``model`` is efficientnet-lite0 (the default, ImageNet weights), small-cnn (from scratch)
    or a previous image run's folder (fine-tuned, with a new head for other classes); ``image_size`` is the
    side images are resized to; ``image_col`` names a table's column of image paths.

    For series (a time column and values: ``task`` "series"), ``horizon`` is the points forecast ahead (a
    season by default), ``time_col`` and ``series_col`` name the time and, in long format, the series-id
    columns, and ``season`` the points in a season (from the frequency by default); ``model`` may be a saved
    forecaster's folder to fine-tune (a base trained on many series).

    ``val`` is a separate validation file; without it a stratified ``val_fraction`` of ``data`` is held out
    (of series: each series' last ``val_fraction``).
    ``label_col`` names the label (or, for tables, target) column. Recipe values come from ``recipe`` (by
    default, the kind of data's own defaults: an MLP and a small CNN from scratch train longer and faster than
    a fine-tune) and then ``recipe_changes`` (e.g. ``epochs=2``). ``store`` is a PostgreSQL URL to keep the
    workspace's tables in (see ``Workspace.open``); the workspace folder records it. ``track`` ("mlflow", or
    "mlflow:URI" for that tracking URI) records the finished run in MLflow too (see ``tracking``).
    """
    problems = option_problems((recipe or Recipe()).replace(**recipe_changes), val_fraction) + track_problems(track)
    if problems:
        raise ConfigError(problems)
    exporter = _exporter(track)
    seed = recipe_changes.get("seed", (recipe or Recipe()).seed)
    read_as = DataOptions(task, text_col, label_col, image_col, image_size, val_fraction, seed, time_col=time_col,
                          series_col=series_col, horizon=horizon, season=season)
    task = load_task(data, val, read_as, model=model)
    base = recipe if recipe is not None else task.default_recipe(Recipe())
    check_knobs(type(task), base.replace(**recipe_changes))  # a knob this kind of data ignores is refused
    recipe = base.replace(**recipe_changes).for_objective(task.objective.name)
    # Everything is checked: only now does the workspace get written. Every finished epoch is saved until the
    # run is done, so that a killed fit continues with resume_fit (tuneloop fit --resume RUN).
    with Workspace.open(workspace, create=True, store=store) as store:
        run, _ = train_run(store, task, recipe, callbacks, checkpoint_for=lambda run_id: _fit_checkpoint(store, run_id))
        _fit_checkpoint(store, run.id).clear()
        if exporter is not None:
            track_run(exporter, store, run.id)
    return run


def resume_fit(run: str, *, workspace: str | os.PathLike | None = None, callbacks: Sequence[Callback] = (),
               track: str | None = None) -> Run:
    """Continue a fit that was killed (or failed) from its last finished epoch, on the same data read the same
    way and the same recipe: a new run, which ends as the interrupted one would have (same batches, same
    random draws). ``run`` is the interrupted run's id or a unique prefix of it; ``track`` as for ``fit``."""
    exporter = _exporter(track)
    with Workspace.open(workspace) as store:
        record = _interrupted_run(store, run)
        checkpoint = _fit_checkpoint(store, record.id)
        if not checkpoint.saved():
            raise TuneloopError(f"run {record.id} saved no finished epoch to continue from (it stopped in its first "
                                "epoch, or it was not a fit): run the fit again.")
        task = task_of_run(record)
        task.cache_in(store.root / "cache")
        resumed, _ = train_run(store, task, Recipe.from_dict(record.recipe), callbacks, checkpoint, resumes=record.id)
        checkpoint.clear()
        if exporter is not None:
            track_run(exporter, store, resumed.id)
    return resumed


def _exporter(track: str | None) -> MlflowExporter | None:
    """The MLflow exporter ``track`` names (None for none), opened before any compute: a missing mlflow package
    or a tracking store that cannot be opened stops the command before it trains anything."""
    target = parse_track(track)
    return None if target is None else open_exporter(target)


def export(reference: str, *, to: str = "mlflow", workspace: str | os.PathLike | None = None) -> Exported:
    """Record a study (by its id: a parent run, and a nested run per trial) or a run (an id, a unique prefix or
    'latest'; a study's trial goes under its study's run) in MLflow, after the fact, as ``track`` does live.
    ``to`` is "mlflow" (MLflow's default store: $MLFLOW_TRACKING_URI, else its own default) or "mlflow:URI".
    Exporting again updates the runs made before instead of making more."""
    target = parse_track(to, name="to")
    with Workspace.open(workspace) as store:
        what, found = exported_as(store, reference)  # before the tracking store is opened (or made)
        return open_exporter(target).export(store, what, found)


def _fit_checkpoint(store: Workspace, run_id: str) -> EpochCheckpoint:
    return EpochCheckpoint(store.root / "checkpoints" / "fit" / run_id)


def _interrupted_run(store: Workspace, reference: str) -> RunRecord:
    """The run ``reference`` names (an id or a unique prefix), which must have ended without its model."""
    matches = [r for r in store.runs() if r.id == reference] or [r for r in store.runs() if r.id.startswith(reference)]
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        raise RunNotFoundError(f"{store.root}: {found} named '{reference}' here; 'tuneloop runs' lists them.")
    record = matches[0]
    if record.status == "completed":
        raise TuneloopError(f"run {record.id} is completed: there is nothing to resume.")
    if record.status == "running":
        raise TuneloopError(f"run {record.id} is still running in another process.")
    return record


def evaluate(run: str | Run, data: str | os.PathLike, *, text_col: str | None = None, label_col: str | None = None,
             image_col: str | None = None, workspace: str | os.PathLike | None = None,
             precision: str = "auto") -> EvaluationReport:
    run = run if isinstance(run, Run) else load_run(run, workspace)
    return run.evaluate(data, text_col=text_col, label_col=label_col, image_col=image_col, precision=precision)


def predict(run: str | Run, data: str | os.PathLike | Sequence[str], *, text_col: str | None = None,
            image_col: str | None = None, workspace: str | os.PathLike | None = None,
            precision: str = "auto") -> Predictions:
    run = run if isinstance(run, Run) else load_run(run, workspace)
    return run.predict(data, text_col=text_col, image_col=image_col, precision=precision)


def generate(run: str | Run, prompts: str | Sequence[str], *, chat: bool = False, max_new_tokens: int | None = None,
             workspace: str | os.PathLike | None = None) -> list[str]:
    """A language model run's greedy answer to each prompt (a single prompt: a list of one), at most
    ``max_new_tokens`` long (by default twice the longest answer it trained on). With ``chat``, each prompt is
    a user's message, rendered with the model's chat template."""
    from tuneloop.data.instructions import InstructionExamples

    run = run if isinstance(run, Run) else load_run(run, workspace)
    if not run.task.predicts_text:
        raise ConfigError([f"run {run.id} is a {run.adapter} model, not a language model: use predict."])
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                       or max_new_tokens < 1):
        raise ConfigError([f"The 'max_new_tokens' parameter must be an int >= 1. Got {max_new_tokens!r} instead."])
    given = [prompts] if isinstance(prompts, str) else list(prompts)
    shaped = [[{"role": "user", "content": p}] for p in given] if chat else given
    examples = InstructionExamples(shaped, None, [f"prompt {i + 1}" for i in range(len(given))], "prompts given")
    return run.task.predict(run, examples, max_new_tokens=max_new_tokens).texts


def runs(workspace: str | os.PathLike | None = None) -> list[RunRecord]:
    with Workspace.open(workspace) as store:
        return store.runs()


@dataclass(frozen=True)
class Collected:
    """What ``gc`` freed: bytes by part, and how many models it removed."""

    freed: dict[str, int]
    models_removed: int


def gc(workspace: str | os.PathLike | None = None, *, keep_models: int = 3, cache_mb: float | None = None
       ) -> Collected:
    """Free the disk a workspace no longer needs: models of ended studies beyond their final model and their
    ``keep_models`` best (registered ones always stay; records stay), model folders no run points at,
    checkpoints of finished studies and completed fits, and feature-cache files beyond ``cache_mb`` megabytes
    (default $TUNELOOP_CACHE_MB or 2048), least recently used first. A running study is left alone; an
    interrupted one keeps its checkpoints, so it can still resume."""
    from tuneloop.data.feature_cache import disk_limit, trim
    from tuneloop.store.workspace import disk_bytes
    from tuneloop.tuning.study import discard_models

    if not (isinstance(keep_models, int) and keep_models >= 0):
        raise ConfigError([f"The 'keep_models' parameter must be an int >= 0. Got {keep_models!r} instead."])
    with Workspace.open(workspace) as store:
        studies = store.connection.execute("SELECT id, status FROM tuneloop_studies").fetchall()
        before = sum(1 for r in store.runs() if r.artifact is not None)
        freed = {"models": sum(discard_models(store, row["id"], keep_models) for row in studies
                               if row["status"] != "running")}
        for folder in store.orphan_folders():
            freed["models"] += disk_bytes(folder, unique_only=True)
            shutil.rmtree(folder, ignore_errors=True)
        removed = before - sum(1 for r in store.runs() if r.artifact is not None)
        finished = {row["id"] for row in studies if row["status"] == "finished"}
        ended_fits = {r.id for r in store.runs() if r.status == "completed"}
        checkpoints = store.root / "checkpoints"
        stale = [checkpoints / name for name in finished] + [checkpoints / "fit" / name for name in ended_fits]
        freed["checkpoints"] = 0
        for folder in stale:
            if folder.is_dir():
                freed["checkpoints"] += disk_bytes(folder)
                shutil.rmtree(folder, ignore_errors=True)
        limit = disk_limit() if cache_mb is None else int(max(0.0, cache_mb) * 2**20)
        freed["feature cache"] = trim(store.root / "cache", limit)
    return Collected(freed, removed)


def disk_usage(workspace: str | os.PathLike | None = None) -> dict[str, int]:
    """Bytes on disk by part of the workspace: models, feature cache, checkpoints, registry, database."""
    with Workspace.open(workspace) as store:
        return store.disk_usage()


def predict_file(run: str | Run, data: str | os.PathLike, output: str | os.PathLike, *, text_col: str | None = None,
                 image_col: str | None = None, workspace: str | os.PathLike | None = None,
                 precision: str = "auto") -> Predictions:
    """Predict the texts, table rows or images of ``data`` and write its rows (for images: each image's
    path) with the predicted label and class probabilities, or the predicted value of a regressor, or a language
    model's completion of each prompt."""
    run = run if isinstance(run, Run) else load_run(run, workspace)
    examples = run.read(data, labelled=False, text_col=text_col, image_col=image_col)
    predictions = run.predict_examples(examples, precision)
    columns = run.task.output_columns(data, examples)
    if predictions.texts is not None:  # a language model's completions
        columns["completion"] = predictions.texts
        write_table(output, columns)
        return predictions
    if predictions.values is not None:
        columns["predicted_value"] = [float(v) for v in np.ravel(predictions.values)]  # a forecast's, step by step
        write_table(output, columns)
        return predictions
    columns["predicted_label"] = predictions.labels
    columns["probability"] = [round(float(p), 6) for p in predictions.probabilities.max(1)]
    for i, name in enumerate(predictions.classes):
        columns[f"prob_{name}"] = [round(float(p), 6) for p in predictions.probabilities[:, i]]
    write_table(output, columns)
    return predictions


DEMO_TRAIN_SIZE = 400
DEMO_VAL_SIZE = 500
DEMO_TEST_SIZE = 1000
DEMO_BUDGET = "150s"


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray, z: float = 1.96) -> tuple[float, float, float]:
    """B's accuracy minus A's on the same examples, and its ~95% interval (normal approximation on the paired
    per-example differences, each -1, 0 or 1)."""
    differences = correct_b.astype(float) - correct_a.astype(float)
    mean = float(differences.mean())
    half = z * float(differences.std(ddof=1)) / math.sqrt(len(differences)) if len(differences) > 1 else math.inf
    return mean, mean - half, mean + half


def demo(*, workspace: str | os.PathLike | None = None, train_size: int = DEMO_TRAIN_SIZE,
         val_size: int = DEMO_VAL_SIZE, test_size: int = DEMO_TEST_SIZE, budget: str = DEMO_BUDGET, seed: int = 0,
         callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """The loop on real data: a guided ``tune`` of the packaged all-MiniLM-L6-v2 on tweets of the 2016 US
    presidential candidates (who wrote it?), within ``budget``. Then, on tweets no trial saw, the final model's
    accuracy next to always answering the commonest author's and next to the study's first trial (what a user
    gets without the loop), and the final model reloaded from disk predicting the same labels."""
    from tuneloop.data.demo import disjoint_samples, election_tweets
    from tuneloop.tuning.study import discard_models

    train_examples, val_examples, test_examples = disjoint_samples(election_tweets(), (train_size, val_size,
                                                                                        test_size), seed)
    # Every trial's model stays until the first is compared with the final one on the test tweets.
    result = tune(train_examples, val_examples, budget=budget, workspace=workspace, keep_models=None,
                  callbacks=callbacks)
    if result.best_run is None:
        raise TuneloopError(f"The demo's study {result.study_id} ended ({result.stop_reason}) without a model.")
    truth = np.array(test_examples.labels)
    final_labels = result.best_run.predict_texts(test_examples.texts).labels
    reloaded = load_run(result.best_run.id, workspace).predict_texts(test_examples.texts).labels
    first = next(t for t in result.trials if t.status == "completed" and t.run_id)
    first_labels = load_run(first.run_id, workspace).predict_texts(test_examples.texts).labels
    final_correct, first_correct = np.array(final_labels) == truth, np.array(first_labels) == truth
    gain, low, high = paired_difference(first_correct, final_correct)
    with Workspace.open(workspace) as store:
        discard_models(store, result.study_id, 3)  # what tune does when it keeps its default 3 best
    counts = np.unique(truth, return_counts=True)[1]
    return {"study": result.study_id, "run": result.best_run.id, "path": str(result.best_run.path),
            "stop_reason": result.stop_reason, "choice": result.choice, "trials": result.to_dict()["trials"],
            "spent_seconds": round(result.spent_seconds, 1), "n_train": len(train_examples),
            "n_val": len(val_examples), "n_test": len(test_examples),
            "test_accuracy": float(final_correct.mean()), "majority_class_rate": float(counts.max() / len(truth)),
            "first_trial": first.number, "first_trial_test_accuracy": float(first_correct.mean()),
            "gain_over_first_trial": gain, "gain_interval": [low, high],
            "reloaded_agreement": float(np.mean(np.array(reloaded) == np.array(final_labels)))}


@dataclass
class TuneResult:
    """The end of a study: its id, every trial, the best trial's run (a model like any other), why it stopped."""

    study_id: str
    best_run: Run | None
    trials: list[Any]
    stop_reason: str
    spent_seconds: float
    seed_check: Any = None
    choice: str | None = None  # how the final model was chosen (the seed check, or cross-validation and a refit)

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study_id, "stop_reason": self.stop_reason, "spent_seconds": round(self.spent_seconds, 1),
            "choice": self.choice,
            "best_run": self.best_run.id if self.best_run else None,
            "best_metrics": self.best_run.metrics if self.best_run else None,
            "seed_check": self.seed_check.to_dict() if self.seed_check else None,
            "trials": [{"number": t.number, "kind": t.kind, "status": t.status, "run": t.run_id, "value": t.value,
                        "recipe": t.recipe.to_dict(), "reason": t.reason, "seconds": round(t.seconds, 1),
                        "parent": t.parent, "no_effect": t.no_effect or None,
                        "diagnosis": t.diagnosis.label if t.diagnosis else None,
                        "diagnosis_summary": t.diagnosis.summary if t.diagnosis else None} for t in self.trials],
        }


def tune(data: str | os.PathLike | Examples | None = None,
         val: str | os.PathLike | Examples | None = None, *, task: str = "auto",
         budget: str = "15m", strategy: str = "guided", target: float | None = None, prune: str = "median",
         text_col: str | None = None, label_col: str | None = None, image_col: str | None = None,
         image_size: int | None = None, model: str | None = None,
         recipe: Recipe | None = None, workspace: str | os.PathLike | None = None, val_fraction: float = 0.2,
         name: str | None = None, resume: str | None = None, seed_check: bool = True, plateau: int | None = None,
         refit: bool = True, keep_models: int | None = 3, callbacks: Sequence[Any] = (),
         time_col: str | None = None, series_col: str | None = None, horizon: int | None = None,
         season: int | None = None, workers: int = 1, executor: str | None = None,
         ray_address: str | None = None, store: str | None = None, track: str | None = None) -> TuneResult:
    """Run train -> evaluate -> diagnose -> adjust until the budget, the target or convergence ends it.

    ``budget`` is wall time from this call (reading the data, the range test and building caches count) or a
    number of search trials. ``resume`` continues a study by id with the data and options it was started
    with: finished trials are not re-run, interrupted ones are, and the time budget counts what was already
    spent. With ``seed_check`` the top two recipes are re-run with other seeds before the best is chosen,
    where that can change the answer (within a quarter of the budget), and their runs' weight average is
    handed back where it scores higher. ``plateau`` trials without a gain beyond validation noise end the
    study (0: never; default: 4 for the guided strategy, never for the others). With ``refit``, where the
    validation set is too small to tell the best recipes apart, they are scored by cross-validation over every
    labelled example where that is cheap, and the chosen one is trained on all of them (instead of the seed
    check); its scores are then estimates. ``task`` is "text", "tabular" or "auto", as for ``fit``. When the
    study ends, the models of its trials are removed from disk except the final model (and an ensemble's
    members), the ``keep_models`` best, and registered ones (None: every model stays); records stay.

    ``workers`` trials train at once, each in a process of its own on this machine (the cores split between
    them); with ``executor="ray"`` they run as Ray tasks on the cluster at ``ray_address`` (a local Ray cluster
    where None). Workers read the data themselves and share the workspace folder, which every one must reach;
    ``store`` (a PostgreSQL URL, or $TUNELOOP_STORE) keeps the workspace's tables and Optuna's where workers on
    several machines reach them.
    A worker that dies mid-trial costs that trial an epoch: it is sent again and continues from its checkpoint.

    ``track`` ("mlflow", or "mlflow:URI" for that tracking URI) records the study in MLflow as it runs: a parent
    run, and a nested run per trial as it starts and ends; when the study ends, the models it kept.
    """
    from tuneloop.tuning.executors import StudySetup, check_executor_options, make_executor
    from tuneloop.tuning.strategies import GuidedStrategy, make_strategy
    from tuneloop.tuning.study import Budget, FinalSteps, check_study_options, new_study_id, run_study

    started = time.monotonic()
    executor_problems = check_executor_options(executor, workers, ray_address) + track_problems(track)
    if executor_problems:
        raise ConfigError(executor_problems)
    exporter = _exporter(track)
    store_url = store
    if resume is not None:
        with Workspace.open(workspace, store=store_url) as store:
            row = store.claim_study(resume)
        options = row["options"]
        spent_before = row["spent_seconds"]
        study_id = resume
    else:
        if data is None:
            raise ConfigError(["tune needs a data file, or --resume STUDY to continue a study."])
        base = recipe or Recipe()
        problems = option_problems(base, val_fraction) + check_study_options(strategy, prune, target, plateau)
        if keep_models is not None and not (isinstance(keep_models, int) and keep_models >= 0):
            problems.append(f"The 'keep_models' parameter must be an int >= 0 or None (every model). "
                            f"Got {keep_models!r} instead.")
        if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            problems.append(f"The 'name' parameter must be letters, digits, '_', '.', '-' (at most 64). "
                            f"Got {name!r} instead.")
        try:
            Budget.parse(budget)
        except ConfigError as error:
            problems += error.problems
        if problems:
            raise ConfigError(problems)
        options = {"data": _as_path(data), "val": _as_path(val) if val is not None else None, "budget": budget,
                   "strategy": strategy, "target": target, "prune": prune, "text_col": text_col,
                   "label_col": label_col, "image_col": image_col, "image_size": image_size, "model": model,
                   "recipe": base.to_dict(), "val_fraction": val_fraction, "plateau": plateau, "refit": refit,
                   "seed_check": seed_check, "keep_models": keep_models, "time_col": time_col,
                   "series_col": series_col, "horizon": horizon, "season": season,
                   "task": modality_of(data, task, text_col, image_col, time_col)}
        if _in_memory(data) or _in_memory(val):
            options["data"], options["val"] = data, val  # in-memory examples: not resumable from the CLI
        spent_before = 0.0
        study_id = name or new_study_id()
    base = Recipe.from_dict(options["recipe"])
    task = study_task(options)
    check_knobs(type(task), base)
    base = base.for_objective(task.objective.name)
    facts = task.facts()
    plan = make_strategy(options["strategy"], facts.num_layers, task.family, facts, options.get("plateau"))

    with Workspace.open(workspace, create=True, store=store_url) as store:
        task.cache_in(store.root / "cache")  # frozen layers' outputs, shared with later studies
        # Workers start now: their imports and their reading of the data overlap the range test.
        pool = make_executor(executor, StudySetup(str(store.root.resolve()), study_id, options["prune"], base.metric,
                                                  options), workers, ray_address)
        try:
            if resume is None and isinstance(plan, GuidedStrategy):
                _first_rate_from_range_test(plan, task, base)
            if resume is None:
                stored = {k: (getattr(v, "source", "examples in memory")
                              if k in ("data", "val") and _in_memory(v) else v) for k, v in options.items()}
                store.create_study(study_id, options["strategy"], base.metric, stored)

            def train_trial(trial_recipe: Recipe, training_callbacks: list[Callback], checkpoint_name: str):
                checkpoint_for, lost = trial_checkpoint(store, store.root / "checkpoints" / study_id / checkpoint_name)
                return train_run(store, task, trial_recipe, training_callbacks, checkpoint_for=checkpoint_for,
                                 resumes=lost)

            def refit_on_all(refit_recipe: Recipe, estimate: dict[str, Any], training_callbacks: list[Callback],
                             checkpoint_name: str) -> Run:
                return refit_run(store, task, refit_recipe, estimate, training_callbacks,
                                 EpochCheckpoint(store.root / "checkpoints" / study_id / checkpoint_name))

            final = FinalSteps(soup=lambda run_ids, soup_recipe: soup_run(store, task, run_ids, soup_recipe),
                               ensemble=(lambda run_ids, estimate: ensemble_run(store, task, run_ids, estimate))
                               if task.averages_predictions else None,
                               cross_validate=lambda cv_recipe, k: cross_validate(task, cv_recipe, k, base.seed),
                               refit=refit_on_all if options.get("refit", True) else None,
                               shares_start=task.starts_pretrained and base.init == "pretrained")

            # The budget counts from this call: reading the data, the range test and the first caches are spent
            # from it like any trial's time (recorded with the study, so a resumed one counts them too).
            setup = time.monotonic() - started
            store.add_spent(study_id, setup)
            trackers = [] if exporter is None else [StudyTracker(exporter, store, study_id)]
            with StudyLease(store.root, study_id, store.store):
                result = run_study(store, study_id, task, base, plan, Budget.parse(options["budget"]),
                                   target=options["target"], prune=options["prune"], train_trial=train_trial,
                                   callbacks=[*callbacks, *trackers], spent_before=spent_before + setup,
                                   seed_check=options.get("seed_check", True), final=final,
                                   keep_models=options.get("keep_models", 3), executor=pool)
            for tracker in trackers:  # after the study discarded the models it does not keep
                tracker.finish()
        finally:
            if pool is not None:
                pool.close()
    best_run = load_run(result.best.run_id, workspace) if result.best else None
    return TuneResult(study_id, best_run, result.trials, result.stop_reason, result.spent_seconds,
                      result.seed_check, result.choice)


def _in_memory(data: Any) -> bool:
    """Examples made in memory (not a file or folder to read): a study stores their source's name only."""
    return data is not None and not isinstance(data, (str, os.PathLike))


def _as_path(value: Any) -> Any:
    return str(Path(value).resolve()) if isinstance(value, (str, os.PathLike)) else value



def lr_find(data: Any, val: Any = None, *, task: str = "auto", text_col: str | None = None,
            label_col: str | None = None, image_col: str | None = None, image_size: int | None = None,
            model: str | None = None, recipe: Recipe | None = None, val_fraction: float = 0.2,
            plot: str | os.PathLike | None = None, time_col: str | None = None, series_col: str | None = None,
            horizon: int | None = None, season: int | None = None, **recipe_changes: Any):
    """The learning-rate range test for ``recipe`` on the training data; writes nothing but ``plot``.

    Frozen layers run once: a head-only recipe sweeps over cached encoder (or image body) vectors, so it
    takes seconds.
    """
    from tuneloop.training.lr_find import find_learning_rate
    from tuneloop.training.lr_find import plot as plot_finding

    recipe = (recipe or Recipe()).replace(**recipe_changes)
    check_options(recipe, val_fraction)
    read_as = DataOptions(task, text_col, label_col, image_col, image_size, val_fraction, recipe.seed,
                          time_col=time_col, series_col=series_col, horizon=horizon, season=season)
    task = load_task(data, val, read_as, model=model)
    check_knobs(type(task), recipe)
    finding = range_test(task, recipe, find_learning_rate)
    if plot is not None:
        plot_finding(finding, str(plot))
    return finding


def _first_rate_from_range_test(plan, task: Task, base: Recipe) -> None:
    """The guided study's first (head-only) recipe takes its learning rate from the range test, which runs
    on the cached encoder vectors that the first trial needs anyway."""
    from tuneloop.training.lr_find import find_learning_rate

    try:
        finding = range_test(task, plan.first_recipe(base), find_learning_rate)
    except ValueError:  # the sweep diverged at once: keep the default rate
        return
    plan.first_learning_rate = min(1e-2, max(1e-4, finding.suggestion))
    plan.first_note = f", at the learning rate the range test suggests ({finding.reason})"


