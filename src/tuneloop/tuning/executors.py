"""Where a study's trials train when not in the driver's own process.

- ``LocalExecutor`` (``tune --workers N``): N worker processes on this machine, the cores split between them.
- ``RayExecutor`` (``tune --executor ray [--ray-address ADDR]``): Ray tasks on a Ray cluster, Ray's own local
  one where no address is given.

A worker gets a ``TrialJob``: plain values that say where the workspace is, how to read the study's data (the
study's options, as ``tune`` stored them) and which trial to train (``study.TrialWork``). It reads the data
itself (once per process: it keeps the task for the study's next trials), trains with ``pipeline.train_run``
into the shared workspace, reports each epoch to the study's pruner through Optuna's storage, and sends back a
``study.TrainedTrial``. The driver diagnoses and records the trial as it does one it trained itself.

A worker that dies mid-trial (killed, out of memory, a Ray node lost) costs the trial its current epoch only:
the trial is sent again, MAX_ATTEMPTS times at most in all, and continues from its last epoch checkpoint in the
shared workspace; the dead attempt's run is marked interrupted by the attempt that continues it. A trial never
runs twice to its end and is never lost: its record is the driver's, written once when it ends.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from tuneloop.config import Recipe
from tuneloop.errors import ConfigError, TuneloopError
from tuneloop.pipeline import study_task, train_run, trial_checkpoint
from tuneloop.store.workspace import Workspace
from tuneloop.tuning.strategies import make_pruner
from tuneloop.tuning.study import ReportToOptuna, TrainedTrial, TrainingDeadline, TrialFailed, TrialWork

MAX_ATTEMPTS = 3  # a trial whose worker dies this many times is recorded as failed
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class StudySetup:
    """What every worker needs to train any trial of one study."""

    workspace: str  # the workspace folder, as every worker reaches it
    study_id: str
    prune: str  # the pruner's name (the driver's and the workers' must match)
    metric: str  # the concrete metric trials are scored by
    options: dict[str, Any]  # the study's options: how its data is read


@dataclass(frozen=True)
class TrialJob:
    setup: StudySetup
    work: TrialWork
    threads: int | None  # torch threads for this trial (None: torch's default)


@dataclass(frozen=True)
class _Crash:
    """An error tuneloop does not expect (a bug, not a bad recipe): the driver raises it."""

    number: int
    text: str


_TASKS: dict[tuple[str, str], Any] = {}  # per worker process: (workspace, study) -> the task read for it


def run_trial_job(job: TrialJob) -> TrainedTrial | TrialFailed:
    """Train one trial in this process, into the shared workspace; what the driver records of it."""
    setup, work = job.setup, job.work
    if job.threads:
        torch.set_num_threads(job.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with Workspace.open(setup.workspace) as store:
        task = _task(setup, store)
        recipe = Recipe.from_dict(work.recipe)
        study = optuna.load_study(study_name=setup.study_id, storage=store.optuna_storage(),
                                  pruner=make_pruner(setup.prune))
        trial = optuna.trial.Trial(study, work.optuna_trial_id)
        deadline = None if work.deadline is None else time.monotonic() + (work.deadline - time.time())
        callbacks: list[Any] = [ReportToOptuna(trial, setup.metric, deadline, prunable=work.prunable,
                                               epochs=recipe.epochs)]
        if deadline is not None:
            callbacks.append(TrainingDeadline(deadline))
        checkpoint_for, lost = trial_checkpoint(store, store.root / "checkpoints" / setup.study_id / work.checkpoint)
        try:
            run, result = train_run(store, task, recipe, callbacks, checkpoint_for=checkpoint_for, resumes=lost)
        except TuneloopError as exc:
            return TrialFailed(str(exc))
    return TrainedTrial.of(run, result)


def _task(setup: StudySetup, store: Workspace) -> Any:
    """The study's task, read as ``tune`` read it (kept for this process's next trials of the study)."""
    key = (setup.workspace, setup.study_id)
    if key not in _TASKS:
        task = study_task(setup.options)
        task.cache_in(store.root / "cache")
        _TASKS.clear()  # one study's data at a time
        _TASKS[key] = task
    return _TASKS[key]


def worker_main(connection: multiprocessing.connection.Connection) -> None:
    """A local worker: read the study's data (its setup is the first message) while the driver starts the study,
    then train each job it is sent until it is sent None."""
    setup = connection.recv()
    try:
        with Workspace.open(setup.workspace) as store:
            _task(setup, store)
    except Exception:  # the first job meets the same error, and reports it as a trial's
        pass
    while True:
        try:
            job = connection.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            outcome: Any = run_trial_job(job)
        except Exception:
            outcome = _Crash(job.work.number, traceback.format_exc())
        connection.send(outcome)


class _Worker:
    """A new interpreter (``python -m tuneloop.tuning.worker FD``) that talks over a socket pair. Not
    multiprocessing's spawn: that runs the caller's main script again in the child, which a script without an
    ``if __name__ == "__main__"`` guard cannot survive; and not fork, which would copy the driver's threads."""

    def __init__(self, setup: StudySetup):
        ours, theirs = socket.socketpair()
        # Its prints go to the driver's stderr: the driver's stdout carries tune --json's output.
        self.process = subprocess.Popen([sys.executable, "-m", "tuneloop.tuning.worker", str(theirs.fileno())],
                                        pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=2)
        theirs.close()
        self.connection = multiprocessing.connection.Connection(ours.detach())
        self.connection.send(setup)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.connection.send(None)
            except OSError:
                pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.connection.close()


class LocalExecutor:
    """``workers`` processes on this machine, started at once (a spawned process imports torch and reads the
    data: seconds, overlapping the driver's range test) and kept for the study, each trial on ``threads`` torch
    threads (the cores split evenly)."""

    def __init__(self, setup: StudySetup, workers: int, threads: int | None = None):
        self.setup, self.workers = setup, workers
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self._idle = [_Worker(setup) for _ in range(workers)]
        self._busy: dict[int, tuple[_Worker, TrialWork, int]] = {}  # trial number -> worker, work, attempt
        self._queue: list[tuple[TrialWork, int]] = []

    def submit(self, work: TrialWork) -> None:
        self._queue.append((work, 1))
        self._dispatch()

    def _dispatch(self) -> None:
        while self._queue and len(self._busy) < self.workers:
            work, attempt = self._queue.pop(0)
            worker = self._idle.pop() if self._idle else _Worker(self.setup)
            worker.connection.send(TrialJob(self.setup, work, self.threads))
            self._busy[work.number] = (worker, work, attempt)

    def wait(self) -> list[tuple[int, TrainedTrial | TrialFailed]]:
        ended: list[tuple[int, TrainedTrial | TrialFailed]] = []
        while not ended:
            self._dispatch()
            if not self._busy:
                return ended
            # A worker's socket is readable when it answers, and at its end of file when it dies.
            handles = {worker.connection: number for number, (worker, _, _) in self._busy.items()}
            for handle in multiprocessing.connection.wait(list(handles)):
                number = handles[handle]
                worker, work, attempt = self._busy.pop(number)
                outcome = _received(worker)
                if outcome is not None:
                    self._idle.append(worker)
                    ended.append((number, _raised(outcome)))
                    continue
                worker.stop(kill=True)  # it died mid-trial: send the trial again, to continue from its checkpoint
                if attempt >= MAX_ATTEMPTS:
                    ended.append((number, TrialFailed(f"its worker process died {attempt} times (exit code "
                                                      f"{worker.process.returncode})")))
                else:
                    self._queue.insert(0, (work, attempt + 1))
        return ended

    def close(self) -> None:
        for worker in self._idle:
            worker.stop()
        for worker, _, _ in self._busy.values():
            worker.stop(kill=True)
        self._idle, self._busy, self._queue = [], {}, []


def _received(worker: _Worker) -> Any:
    """The worker's answer, or None where its pipe closed because it died."""
    try:
        return worker.connection.recv()
    except (EOFError, OSError):
        return None


def _raised(outcome: Any) -> TrainedTrial | TrialFailed:
    if isinstance(outcome, _Crash):
        raise RuntimeError(f"trial {outcome.number} failed in its worker:\n{outcome.text}")
    return outcome


class RayExecutor:
    """Trials as Ray tasks, ``workers`` at a time, each on an equal share of the cluster's CPUs. Ray retries a
    task whose worker or node died (MAX_ATTEMPTS in all); the retry continues from the trial's checkpoint.

    Without ``address`` a local Ray cluster is started for the study and shut down after it, its temporary
    and session files in ``temp_dir`` (a new temporary folder by default), not under the user's home."""

    def __init__(self, setup: StudySetup, workers: int, address: str | None = None, temp_dir: str | None = None):
        try:
            import ray
        except ImportError as exc:
            raise ConfigError(["--executor ray needs Ray: pip install 'tuneloop[ray]'."]) from exc
        self.setup, self.workers = setup, workers
        self._started = not ray.is_initialized()
        self._temp_dir: str | None = None  # made here, removed on close
        if self._started:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                if temp_dir is None:
                    temp_dir = self._temp_dir = tempfile.mkdtemp(prefix="tuneloop-ray-")
                if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
                    # A new cluster's token would be written to ~/.ray/auth_token: give it one of its own.
                    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir)
        _ray_notices_to_stderr()
        cpus = float(ray.cluster_resources().get("CPU", 1))
        self.threads = max(1, int(cpus // workers))
        self._remote = ray.remote(num_cpus=min(self.threads, cpus), max_retries=MAX_ATTEMPTS - 1)(run_trial_job)
        self._running: dict[Any, int] = {}  # Ray's reference -> trial number

    def submit(self, work: TrialWork) -> None:
        reference = self._remote.remote(TrialJob(self.setup, work, self.threads))
        self._running[reference] = work.number

    def wait(self) -> list[tuple[int, TrainedTrial | TrialFailed]]:
        import ray

        if not self._running:
            return []
        ready, _ = ray.wait(list(self._running), num_returns=1)
        ended: list[tuple[int, TrainedTrial | TrialFailed]] = []
        for reference in ready:
            number = self._running.pop(reference)
            try:
                outcome: TrainedTrial | TrialFailed = ray.get(reference)
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                    ray.exceptions.TaskUnschedulableError) as exc:
                outcome = TrialFailed(f"its Ray task failed {MAX_ATTEMPTS} times: {type(exc).__name__}")
            ended.append((number, outcome))
        return ended

    def close(self) -> None:
        import ray

        for reference in self._running:
            ray.cancel(reference, force=True)
        self._running = {}
        if self._started:
            ray.shutdown()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)


def _ray_notices_to_stderr() -> None:
    """Ray prints its cluster's notices (such as "A worker died or was killed ...") on the driver's stdout,
    which carries ``tune --json``'s output: send them to stderr. (Ray's own module function, replaced where it
    has the name and shape this Ray version gives it; elsewhere left as it is.)"""
    from ray._private import worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "tuneloop_stderr", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr.tuneloop_stderr = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_stderr


def check_executor_options(name: str | None, workers: Any, address: str | None) -> list[str]:
    """What is wrong with ``tune``'s executor options, checked before anything is written."""
    problems = []
    if name not in (None, *EXECUTORS):
        problems.append(f"The 'executor' parameter must be one of {', '.join(EXECUTORS)}. Got {name!r} instead.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        problems.append(f"The 'workers' parameter must be an int >= 1. Got {workers!r} instead.")
    if address and name != "ray":
        problems.append("The 'ray_address' parameter applies to the Ray executor only (--executor ray).")
    return problems


def make_executor(name: str | None, setup: StudySetup, workers: int, address: str | None = None
                  ) -> LocalExecutor | RayExecutor | None:
    """The executor ``tune`` asked for: None (trials in this process) for one local worker."""
    if name == "ray":
        return RayExecutor(setup, workers, address)
    return LocalExecutor(setup, workers) if workers > 1 else None
