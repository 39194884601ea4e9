"""Writing the workspace's runs and studies to MLflow, with ``MlflowClient`` and explicit run ids (no active run,
so nothing here touches the global state of a user's own MLflow code).

A study is a parent run and each trial a nested run under it (``mlflow.parentRunId``); a ``fit`` is one run.
Every run carries the tags that find it again (``tuneloop.run_id``; ``tuneloop.study_id`` with
``tuneloop.trial``; a study's ``tuneloop.study_id``), and an export first looks for them: exporting twice
updates the runs it made the first time (new tags, a status, a model not yet uploaded) instead of making more.

Live tracking is the same export, called as each trial starts and ends (``StudyTracker``, a study callback: the
driver calls it in its own process, wherever the trials train). A trial's model is uploaded when its study has
ended, only where it is still on disk: the study keeps its final model and its best few, and MLflow then holds
what the workspace holds rather than every trial's model.

mlflow is an optional extra (``pip install 'tuneloop[mlflow]'``), imported only here and only when used.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuneloop.errors import RunNotFoundError, TuneloopError
from tuneloop.store.registry import Registry
from tuneloop.store.workspace import RunRecord, Workspace
from tuneloop.tracking.records import TrackedRun, UpdateDecision, fit_run, study_run, trial_run
from tuneloop.tracking.target import TrackTarget

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from tuneloop.config import Recipe
    from tuneloop.training.loop import Callback
    from tuneloop.tuning.study import TrialRecord

EXPERIMENT = "tuneloop"  # the experiment runs go to, unless $MLFLOW_EXPERIMENT_NAME names another
MODEL_PATH = "model"  # where a run's model folder goes among its artifacts
INSTALL_HINT = "pip install 'tuneloop[mlflow]'"


@dataclass
class Exported:
    """What an export wrote: a study (its parent run, and a run per trial by trial number) or a run; where
    (the tracking URI and experiment); and how many of those runs it made (the rest were there from an earlier
    export, and were brought up to date)."""

    what: str  # "study" or "run"
    id: str  # the study's or the run's id in the workspace
    uri: str
    experiment_id: str
    run_id: str  # the MLflow run of the study (the parent) or of the run
    trials: dict[int, str] = field(default_factory=dict)
    new: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "id": self.id, "uri": self.uri, "experiment_id": self.experiment_id,
                "mlflow_run_id": self.run_id, "trials": {str(k): v for k, v in self.trials.items()},
                "new_runs": self.new}


def quiet_mlflow() -> None:
    """Keep MLflow off the network: its usage telemetry is sent from a thread that ``import mlflow`` starts
    unless $MLFLOW_DISABLE_TELEMETRY (or $DO_NOT_TRACK) says not to, so this runs before the import. A user
    who set either variable keeps their choice."""
    if "DO_NOT_TRACK" not in os.environ:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def open_exporter(target: TrackTarget) -> MlflowExporter:
    """A client of the tracking store ``target`` names, with its experiment (made where there is none).
    Called before any training, so a missing package or a store that cannot be opened stops the command
    before it spends anything."""
    quiet_mlflow()
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise TuneloopError(f"Tracking in MLflow needs the mlflow package, which is not installed: {INSTALL_HINT}."
                            ) from exc
    try:
        client = MlflowClient(tracking_uri=target.uri)
        uri = client.tracking_uri
        return MlflowExporter(client, _experiment(client, os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT),
                              uri)
    except (MlflowException, OSError) as exc:
        message = exc.message if isinstance(exc, MlflowException) else str(exc)
        raise TuneloopError(f"MLflow tracking store {target.uri or '(MLflow default)'}: {message.strip()}") from exc


def exported_as(store: Workspace, reference: str) -> tuple[str, str]:
    """What ``reference`` names: ("study", its id) for a study's id, else ("run", its id) for a completed run's
    id, unique prefix or 'latest'; a RunNotFoundError that lists both where it names neither."""
    if any(study["id"] == reference for study in store.studies()):
        return "study", reference
    try:
        return "run", store.resolve(reference).id
    except RunNotFoundError as exc:
        studies = ", ".join(study["id"] for study in store.studies()[-5:]) or "none"
        raise RunNotFoundError(f"{exc} Recent studies: {studies}.") from exc


def _experiment(client: MlflowClient, name: str) -> str:
    """The id of the experiment ``name``, made where there is none."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "deleted":
        raise TuneloopError(f"The MLflow experiment '{name}' is deleted: restore it (mlflow experiments restore "
                            f"--experiment-id {found.experiment_id}) or set $MLFLOW_EXPERIMENT_NAME to another.")
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # made meanwhile by another process exporting to the same store
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class MlflowExporter:
    """Exports runs, trials and studies from a workspace to one MLflow experiment."""

    def __init__(self, client: MlflowClient, experiment_id: str, uri: str):
        self.client, self.experiment_id, self.uri = client, experiment_id, uri
        self._found: dict[tuple[tuple[str, str], ...], str] = {}  # identity tags -> MLflow run id, once known

    # -- what the workspace holds -----------------------------------------------------------------------

    def export(self, store: Workspace, what: str, reference: str) -> Exported:
        """A study or a run (``what``, and its id, as ``exported_as`` found them); a run that is a study's trial
        is exported as that trial, under its study's run."""
        if what == "study":
            return self.export_study(store, reference)
        study_id = store.study_of(reference)
        if study_id is None:
            return self.export_run(store, reference)
        number = next(row["number"] for row in store.trials(study_id) if row["run_id"] == reference)
        parent, new = self._write_study(store, study_id)
        trial, made = self.export_trial(store, study_id, number, parent=parent)
        return Exported("run", reference, self.uri, self.experiment_id, trial, {number: trial}, new + made)

    def export_run(self, store: Workspace, run_id: str, *, artifacts: bool = True) -> Exported:
        """A run of its own (a ``fit``), with its model where it is still on disk."""
        record = _record(store, run_id)
        mlflow_run, new = self._write(fit_run(record, store.epochs(run_id)), artifacts=artifacts)
        return Exported("run", run_id, self.uri, self.experiment_id, mlflow_run, new=int(new))

    def export_study(self, store: Workspace, study_id: str, *, artifacts: bool = True) -> Exported:
        """A study and each of its trials, with the models still on disk."""
        parent, new = self._write_study(store, study_id)
        exported = Exported("study", study_id, self.uri, self.experiment_id, parent, new=int(new))
        study, rows = _study(store, study_id), store.trials(study_id)
        records = {record.id: record for record in store.runs()}  # read once: a study can have hundreds of trials
        for row in rows:
            exported.trials[row["number"]], made = self._write_trial(store, study, rows, row["number"], records,
                                                                     parent, artifacts)
            exported.new += int(made)
        return exported

    def export_trial(self, store: Workspace, study_id: str, number: int, *, parent: str | None = None,
                     artifacts: bool = True) -> tuple[str, bool]:
        """One trial of a study, nested under the study's run (written first where ``parent`` is not given);
        its MLflow run id, and whether this export made it."""
        if parent is None:
            parent, _ = self._write_study(store, study_id)
        rows = store.trials(study_id)
        run_id = next((row["run_id"] for row in rows if row["number"] == number), None)
        records = {run_id: _record(store, run_id)} if run_id else {}
        return self._write_trial(store, _study(store, study_id), rows, number, records, parent, artifacts)

    def _write_trial(self, store: Workspace, study: dict[str, Any], rows: list[dict[str, Any]], number: int,
                     records: dict[str, RunRecord], parent: str, artifacts: bool) -> tuple[str, bool]:
        """Trial ``number`` of ``rows`` (the study's stored trials), with its run's record from ``records``."""
        by_number = {row["number"]: row for row in rows}
        row = by_number[number]
        record = records.get(row["run_id"]) if row.get("run_id") else None
        epochs = store.epochs(record.id) if record is not None else []
        started_from = by_number.get(row["parent"]) if row.get("parent") is not None else None
        tracked = trial_run(study["id"], row, record, epochs, started_from["recipe"] if started_from else None,
                            study["created_at"])
        return self._write(tracked, parent=parent, artifacts=artifacts)

    def _write_study(self, store: Workspace, study_id: str) -> tuple[str, bool]:
        """The study's own run (the parent of its trials'), brought up to date."""
        study = _study(store, study_id)
        return self._write(study_run(study, store.trials(study_id), _update_of(store, study)))

    # -- MLflow -----------------------------------------------------------------------------------------

    def _write(self, tracked: TrackedRun, *, parent: str | None = None, artifacts: bool = False) -> tuple[str, bool]:
        """Make or update the MLflow run of ``tracked``: parameters and metrics not logged yet (parameters cannot
        change in MLflow, and a metric logged twice would be two points), every tag, its model folder once,
        its status. Returns its run id, and whether it was made now."""
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
        from mlflow.utils.validation import (
            MAX_METRICS_PER_BATCH,
            MAX_PARAM_VAL_LENGTH,
            MAX_PARAMS_TAGS_PER_BATCH,
            MAX_TAG_VAL_LENGTH,
        )

        tags = {**tracked.tags, **({MLFLOW_PARENT_RUN_ID: parent} if parent else {})}
        if tracked.note:
            tags[MLFLOW_RUN_NOTE] = tracked.note
        existing = self._find(tracked.identity)
        if existing is None:
            run = self.client.create_run(self.experiment_id, start_time=tracked.start_ms, run_name=tracked.name,
                                         tags={key: _cut(value, MAX_TAG_VAL_LENGTH) for key, value in tags.items()})
            run_id, logged_params, logged_steps, status = run.info.run_id, {}, {}, run.info.status
            self._found[_key(tracked.identity)] = run_id
        else:
            run_id, logged_params, status = existing.info.run_id, existing.data.params, existing.info.status
            logged_steps = self._logged_steps(run_id, existing.data.metrics, tracked)
        params = [Param(key, _cut(value, MAX_PARAM_VAL_LENGTH)) for key, value in tracked.params.items()
                  if key not in logged_params]
        metrics = [Metric(m.key, m.value, m.timestamp_ms, m.step) for m in tracked.metrics
                   if m.step not in logged_steps.get(m.key, ())]
        for chunk in _chunks(params, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk)
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=chunk)
        if existing is not None:
            for chunk in _chunks([RunTag(key, _cut(value, MAX_TAG_VAL_LENGTH)) for key, value in tags.items()],
                                 MAX_PARAMS_TAGS_PER_BATCH):
                self.client.log_batch(run_id, tags=chunk)
        if artifacts and tracked.artifact is not None and not self.client.list_artifacts(run_id, MODEL_PATH):
            self.client.log_artifacts(run_id, str(tracked.artifact), MODEL_PATH)
        if tracked.status != "RUNNING":
            self.client.set_terminated(run_id, tracked.status, tracked.end_ms)
        elif status != "RUNNING":  # a resumed study runs again
            self.client.update_run(run_id, status="RUNNING")
        return run_id, existing is None

    def _logged_steps(self, run_id: str, logged: Iterable[str], tracked: TrackedRun) -> dict[str, set[int]]:
        """The steps already logged of each of ``tracked``'s metrics that the run has. A key only ever logged at
        step 0 (a final score, a trial's objective) is there at step 0 if it is there at all: its history is
        not fetched (a trial has dozens of them, and a study's export would fetch them all)."""
        steps: dict[str, set[int]] = {}
        for metric in tracked.metrics:
            steps.setdefault(metric.key, set()).add(metric.step)
        logged = set(logged)
        return {key: {0} if wanted == {0} else {m.step for m in self.client.get_metric_history(run_id, key)}
                for key, wanted in steps.items() if key in logged}

    def _find(self, identity: dict[str, str]) -> Any:
        """The live (not deleted) MLflow run with these identity tags in the experiment, or None."""
        known = self._found.get(_key(identity))
        if known is not None:
            return self.client.get_run(known)
        where = " AND ".join(f"tags.`{key}` = '{_quoted(value)}'" for key, value in identity.items())
        found = self.client.search_runs([self.experiment_id], filter_string=where, max_results=1,
                                        order_by=["attributes.start_time ASC"])
        if not found:
            return None
        self._found[_key(identity)] = found[0].info.run_id
        return found[0]


class StudyTracker:
    """A study callback that exports each trial as it starts and as it ends, and the whole study (the models it
    kept) when it is over. A tracking store that fails mid-study costs a warning, not the study: training goes
    on, and ``tuneloop export mlflow STUDY`` records it afterwards."""

    def __init__(self, exporter: MlflowExporter, store: Workspace, study_id: str):
        self.exporter, self.store, self.study_id = exporter, store, study_id

    def training_callbacks(self) -> list[Callback]:
        return []

    def on_trial_start(self, number: int, recipe: Recipe, reason: str) -> None:
        self.trial_changed(number)

    def on_trial_end(self, trial: TrialRecord, best: TrialRecord | None) -> None:
        self.trial_changed(trial.number)

    def trial_changed(self, number: int) -> None:
        """Export trial ``number`` as the workspace records it now (running, or ended)."""
        tracking(lambda: self.exporter.export_trial(self.store, self.study_id, number, artifacts=False),
                 f"study {self.study_id}", self.study_id)

    def finish(self) -> None:
        """The study is over: its run's decision and status, and the models it kept."""
        tracking(lambda: self.exporter.export_study(self.store, self.study_id), f"study {self.study_id}",
                 self.study_id)


def track_run(exporter: MlflowExporter, store: Workspace, run_id: str) -> None:
    """Export a finished ``fit``; a failure is a warning (the run is saved either way)."""
    tracking(lambda: exporter.export_run(store, run_id), f"run {run_id}", run_id)


def tracking(export: Callable[[], Any], what: str, reference: str) -> None:
    """Run ``export``, turning a failure into a warning. Any error: the tracking store is another system (a
    server, a disk) whose failures must not end the training that it records."""
    try:
        export()
    except Exception as exc:
        warnings.warn(f"Tracking {what} in MLflow failed ({type(exc).__name__}: {exc}); the workspace keeps "
                      f"every record, and 'tuneloop export mlflow {reference}' sends it afterwards.", stacklevel=2)


def _update_of(store: Workspace, study: dict[str, Any]) -> UpdateDecision | None:
    """For an update's study (``adapt``): the version it registered, with the gate's decision and whether it
    was promoted; None for any other study, or an update not registered yet."""
    name = study["options"].get("name")
    if study["strategy"] != "adapt" or not name:
        return None
    registry = Registry(store)
    version = next((v for v in registry.versions(name) if v.lineage.get("study") == study["id"]), None)
    if version is None:
        return None
    promotions = [e for e in registry.events(name) if e["version"] == version.version and e["action"] == "promote"]
    return UpdateDecision(version.ref, version.run_id, version.stage, version.gate, bool(promotions),
                          any(e["forced"] for e in promotions))


def _study(store: Workspace, study_id: str) -> dict[str, Any]:
    found = next((study for study in store.studies() if study["id"] == study_id), None)
    if found is None:
        raise RunNotFoundError(f"{store.root}: no study '{study_id}'.")
    return found


def _record(store: Workspace, run_id: str) -> RunRecord:
    found = store.run(run_id)  # one row, not every run: a tracked study asks once per trial
    if found is None:
        raise RunNotFoundError(f"{store.root}: no run '{run_id}'.")
    return found


def _key(identity: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(identity.items()))


def _quoted(value: str) -> str:
    """A value inside a quoted string of MLflow's search syntax."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _cut(value: str, limit: int) -> str:
    """A value within MLflow's length limit (long reasons and notes end in '...')."""
    return value if len(value) <= limit else value[:limit - 3] + "..."


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    return (items[i:i + size] for i in range(0, len(items), size))
