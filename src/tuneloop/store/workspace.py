"""The workspace folder: ``tuneloop.db`` (SQLite, WAL) with runs and their per-epoch metrics, and
``artifacts/<run id>/`` with each finished run's model.

A run's row is written when it starts (status 'running'), each epoch as it ends, and it becomes
'completed' only after its artifact folder has been renamed into place, so a row never points at a
folder that is not whole. A run whose process died is marked 'interrupted' the next time the workspace
is opened, and its partial folder is removed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import RunNotFoundError, TuneloopError

DEFAULT_WORKSPACE = "tuneloop-runs"
SCHEMA_VERSION = 6  # 2: regression metrics per epoch, classification metrics nullable; 3: the registry, and
# each run's data options (how its data was read and split); 4: each trial's parent, its validation predictions
# and whether it had no effect; 5: the identity of the process that runs a run or study (its start time with
# its PID: PIDs are reused); 6: forecasters' MASE and sMAPE per epoch; see _upgrade_from_1 to _upgrade_from_5
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'pruned', 'failed', 'interrupted')),
    task TEXT NOT NULL,
    adapter TEXT NOT NULL,
    backbone TEXT NOT NULL,
    train_source TEXT NOT NULL,
    val_source TEXT NOT NULL,
    train_fingerprint TEXT NOT NULL,
    val_fingerprint TEXT NOT NULL,
    n_train INTEGER NOT NULL,
    n_val INTEGER NOT NULL,
    recipe TEXT NOT NULL,
    metrics TEXT,
    best_epoch INTEGER,
    seconds REAL,
    artifact TEXT,
    error TEXT,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    data_options TEXT,
    process TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id),
    epoch INTEGER NOT NULL,
    train_loss REAL NOT NULL,
    val_loss REAL NOT NULL,
    val_accuracy REAL,
    val_macro_f1 REAL,
    learning_rate REAL NOT NULL,
    train_samples_per_s REAL NOT NULL,
    seconds REAL NOT NULL,
    val_mae REAL,
    val_rmse REAL,
    val_r2 REAL,
    val_mase REAL,
    val_smape REAL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS tuneloop_studies (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'interrupted')),
    strategy TEXT NOT NULL,
    metric TEXT NOT NULL,
    options TEXT NOT NULL,
    spent_seconds REAL NOT NULL DEFAULT 0,
    stop_reason TEXT,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    choice TEXT,
    process TEXT
);
CREATE TABLE IF NOT EXISTS tuneloop_trials (
    study_id TEXT NOT NULL REFERENCES tuneloop_studies(id),
    number INTEGER NOT NULL,
    optuna_number INTEGER NOT NULL,
    run_id TEXT REFERENCES runs(id),
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'pruned', 'failed', 'interrupted')),
    recipe TEXT NOT NULL,
    reason TEXT NOT NULL,
    value REAL,
    diagnosis TEXT,
    diagnosis_summary TEXT,
    evidence TEXT,
    seconds REAL,
    parent INTEGER,
    no_effect TEXT,
    predictions TEXT,
    PRIMARY KEY (study_id, number)
);
CREATE TABLE IF NOT EXISTS registry_versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    run_id TEXT NOT NULL REFERENCES runs(id),
    parent INTEGER,
    stage TEXT NOT NULL CHECK (stage IN ('candidate', 'production', 'archived')),
    lineage TEXT NOT NULL,
    metrics TEXT NOT NULL,
    gate TEXT,
    reason TEXT,
    folder TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS registry_one_production ON registry_versions (name) WHERE stage = 'production';
CREATE TABLE IF NOT EXISTS registry_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('register', 'promote', 'rollback', 'archive')),
    previous INTEGER,
    at TEXT NOT NULL,
    reason TEXT,
    forced INTEGER NOT NULL DEFAULT 0,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL
);
"""


def _create_tables(connection: sqlite3.Connection) -> None:
    """Each CREATE of SCHEMA on its own (executescript would commit the caller's transaction first)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            connection.execute(statement)


def _upgrade_from_1(connection: sqlite3.Connection) -> None:
    """Schema 1 -> 2, inside the caller's transaction: SQLite cannot drop a NOT NULL constraint, so the
    epochs table is rebuilt with the classification columns nullable and the regression ones added."""
    connection.execute("ALTER TABLE epochs RENAME TO epochs_schema1")
    _create_tables(connection)
    connection.execute("INSERT INTO epochs (run_id, epoch, train_loss, val_loss, val_accuracy, val_macro_f1, "
                       "learning_rate, train_samples_per_s, seconds) SELECT run_id, epoch, train_loss, val_loss, "
                       "val_accuracy, val_macro_f1, learning_rate, train_samples_per_s, seconds FROM epochs_schema1")
    connection.execute("DROP TABLE epochs_schema1")


def _upgrade_from_2(connection: sqlite3.Connection) -> None:
    """Schema 2 -> 3, inside the caller's transaction: runs gain their data options (the registry tables are
    new, and created with the others)."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(runs)")}
    if "data_options" not in columns:
        connection.execute("ALTER TABLE runs ADD COLUMN data_options TEXT")


def _upgrade_from_3(connection: sqlite3.Connection) -> None:
    """Schema 3 -> 4, inside the caller's transaction: trials gain the trial their move started from, whether
    they changed nothing (the sentence that says so), and their validation predictions (to tell that)."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(tuneloop_trials)")}
    for name, kind in (("parent", "INTEGER"), ("no_effect", "TEXT"), ("predictions", "TEXT")):
        if name not in columns:
            connection.execute(f"ALTER TABLE tuneloop_trials ADD COLUMN {name} {kind}")
    if "choice" not in {row[1] for row in connection.execute("PRAGMA table_info(tuneloop_studies)")}:
        connection.execute("ALTER TABLE tuneloop_studies ADD COLUMN choice TEXT")


def _upgrade_from_4(connection: sqlite3.Connection) -> None:
    """Schema 4 -> 5, inside the caller's transaction: runs and studies gain the identity of their process."""
    for table in ("runs", "tuneloop_studies"):
        if "process" not in {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}:
            connection.execute(f"ALTER TABLE {table} ADD COLUMN process TEXT")


def _upgrade_from_5(connection: sqlite3.Connection) -> None:
    """Schema 5 -> 6, inside the caller's transaction: epochs gain a forecaster's MASE and sMAPE."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(epochs)")}
    for name in ("val_mase", "val_smape"):
        if name not in columns:
            connection.execute(f"ALTER TABLE epochs ADD COLUMN {name} REAL")


def process_identity(pid: int) -> str | None:
    """What tells a process from a later one given the same PID: the boot and the process's start time (in
    clock ticks since boot), from /proc; None where there is no /proc (then the PID alone is compared)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return f"{boot}:{fields[19]}"  # field 22 of the line: starttime


def process_alive(pid: int, identity: str | None) -> bool:
    """Whether the process recorded as ``pid`` (started as ``identity``, where recorded) still runs: a PID now
    held by another process is not it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if identity is None:
        return True
    now = process_identity(pid)
    return now is None or now == identity


def disk_bytes(folder: Path, unique_only: bool = False) -> int:
    """The bytes of the files under ``folder`` (with ``unique_only``, only files not also linked elsewhere)."""
    if not folder.exists():
        return 0
    total = 0
    for file in folder.rglob("*"):
        if file.is_file() and not file.is_symlink():
            stat = file.stat()
            if not unique_only or stat.st_nlink == 1:
                total += stat.st_size
    return total


def workspace_root(path: str | os.PathLike | None = None) -> Path:
    """``path``, else $TUNELOOP_HOME, else ./tuneloop-runs."""
    return Path(path or os.environ.get("TUNELOOP_HOME") or DEFAULT_WORKSPACE)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass(frozen=True)
class RunRecord:
    id: str
    created_at: str
    finished_at: str | None
    status: str
    task: str
    adapter: str
    backbone: str
    train_source: str
    val_source: str
    n_train: int
    n_val: int
    recipe: dict[str, Any]
    metrics: dict[str, Any]
    best_epoch: int | None
    seconds: float | None
    artifact: Path | None
    train_fingerprint: str = ""
    val_fingerprint: str = ""
    data_options: dict[str, Any] | None = None  # how the data was read and split; None for older runs
    note: str | None = None  # why it ended without a model, or why its model was removed


class Workspace:
    def __init__(self, root: Path, connection: sqlite3.Connection):
        self.root = root
        self.artifacts = root / "artifacts"
        self._db = connection

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, create: bool = False) -> Workspace:
        root = workspace_root(path)
        db_path = root / "tuneloop.db"
        if not db_path.exists() and not create:
            raise RunNotFoundError(f"{root}: no tuneloop workspace here (no tuneloop.db). "
                                   "Train a model with 'tuneloop fit' first, or point --workspace at one.")
        root.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(db_path, timeout=30, isolation_level=None)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA foreign_keys=ON")
        # One write transaction, version read inside it: two processes opening an old workspace at once
        # upgrade it once, and a crash mid-upgrade leaves schema 1 as it was.
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise TuneloopError(f"{db_path}: written by a newer tuneloop (schema {version}; "
                                    f"this one reads {SCHEMA_VERSION}). Upgrade tuneloop.")
            if version == 1:
                _upgrade_from_1(connection)
            if version in (1, 2):
                _upgrade_from_2(connection)
            if version in (1, 2, 3):
                _upgrade_from_3(connection)
            if version in (1, 2, 3, 4):
                _upgrade_from_4(connection)
            if version in (1, 2, 3, 4, 5):
                _upgrade_from_5(connection)
            _create_tables(connection)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            connection.close()
            raise
        workspace = cls(root, connection)
        workspace._mark_interrupted()
        return workspace

    @property
    def connection(self) -> sqlite3.Connection:
        """The open database (autocommit mode: a caller that needs a transaction begins one itself)."""
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction: the write lock is taken at BEGIN, so what is read inside cannot change
        before the writes, and the writes land together or not at all. Inside another, it is part of that one.
        (The connection is in autocommit mode, where ``with connection:`` begins nothing.)"""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # some SQLite errors end the transaction themselves
                self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs -------------------------------------------------------------------------------------------

    def start_run(self, *, task: str, adapter: str, backbone: str, train_source: str, val_source: str,
                  train_fingerprint: str, val_fingerprint: str, n_train: int, n_val: int,
                  recipe: dict[str, Any], data_options: dict[str, Any] | None = None) -> str:
        """A new run, 'running'; ``data_options`` say how its data was read and split (columns, validation
        share, seed), so that the same examples can be read again later (to register the run's model)."""
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        with self.transaction():
            self._db.execute(
                "INSERT INTO runs (id, created_at, status, task, adapter, backbone, train_source, val_source, "
                "train_fingerprint, val_fingerprint, n_train, n_val, recipe, host, pid, data_options, process) "
                "VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, _now(), task, adapter, backbone, train_source, val_source, train_fingerprint,
                 val_fingerprint, n_train, n_val, json.dumps(recipe), socket.gethostname(), os.getpid(),
                 json.dumps(data_options) if data_options is not None else None, process_identity(os.getpid())))
        return run_id

    def record_epoch(self, run_id: str, epoch: dict[str, float]) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO epochs (run_id, epoch, train_loss, val_loss, val_accuracy, val_macro_f1, "
                "learning_rate, train_samples_per_s, seconds, val_mae, val_rmse, val_r2, val_mase, val_smape) VALUES "
                "(:run_id, :epoch, :train_loss, :val_loss, :val_accuracy, :val_macro_f1, :learning_rate, "
                ":train_samples_per_s, :seconds, :val_mae, :val_rmse, :val_r2, :val_mase, :val_smape)",
                {"val_mae": None, "val_rmse": None, "val_r2": None, "val_mase": None, "val_smape": None,
                 "run_id": run_id, **epoch})

    def artifact_dir(self, run_id: str) -> Path:
        return self.artifacts / run_id

    def complete_run(self, run_id: str, metrics: dict[str, Any], best_epoch: int, seconds: float) -> None:
        """Mark the run completed; its artifact folder must already be in place."""
        artifact = self.artifact_dir(run_id)
        if not artifact.is_dir():
            raise RuntimeError(f"run {run_id} has no artifact folder at {artifact}")
        with self.transaction():
            self._db.execute(
                "UPDATE runs SET status='completed', finished_at=?, metrics=?, best_epoch=?, seconds=?, artifact=? "
                "WHERE id=?",
                (_now(), json.dumps(metrics), best_epoch, seconds, str(artifact.relative_to(self.root)), run_id))

    def fail_run(self, run_id: str, error: str, status: str = "failed", metrics: dict[str, Any] | None = None) -> None:
        """End a run without a model: failed, interrupted, or pruned (then with the metrics it reached)."""
        with self.transaction():
            self._db.execute(
                "UPDATE runs SET status=?, finished_at=?, error=?, metrics=? WHERE id=? AND status='running'",
                (status, _now(), error, json.dumps(metrics) if metrics else None, run_id))
        self._remove_partials(run_id)

    def _mark_interrupted(self) -> None:
        """Runs of this host whose process is gone were killed: say so, and drop their partial folders.
        Their trials, and studies whose process is gone, are marked interrupted too, each study with its
        trials in one transaction. A process is gone when its PID is free or held by a later process."""
        host = socket.gethostname()
        for row in self._db.execute("SELECT id, pid, process FROM runs WHERE status='running' AND host=?",
                                    (host,)).fetchall():
            if not process_alive(row["pid"], row["process"]):
                self.fail_run(row["id"], "the process ended before the run finished", status="interrupted")
        for row in self._db.execute("SELECT id, pid, process FROM tuneloop_studies WHERE status='running' AND host=?",
                                    (host,)).fetchall():
            if not process_alive(row["pid"], row["process"]):
                with self.transaction():
                    self._db.execute("UPDATE tuneloop_studies SET status='interrupted' WHERE id=? AND status='running' "
                                     "AND pid=?", (row["id"], row["pid"]))
                    self._db.execute("UPDATE tuneloop_trials SET status='interrupted' "
                                     "WHERE study_id=? AND status='running'", (row["id"],))

    # -- studies ----------------------------------------------------------------------------------------

    def create_study(self, study_id: str, strategy: str, metric: str, options: dict[str, Any]) -> None:
        if self._db.execute("SELECT 1 FROM tuneloop_studies WHERE id=?", (study_id,)).fetchone():
            raise TuneloopError(f"{self.root}: a study named '{study_id}' exists already. Continue it with "
                                f"'tuneloop tune --resume {study_id}' or choose another --name.")
        with self.transaction():
            self._db.execute("INSERT INTO tuneloop_studies (id, created_at, status, strategy, metric, options, host, "
                             "pid, process) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                             (study_id, _now(), strategy, metric, json.dumps(options), socket.gethostname(),
                              os.getpid(), process_identity(os.getpid())))

    def claim_study(self, study_id: str) -> dict[str, Any]:
        """Take over an interrupted or finished study in this process, and return its row. The check and the
        claim are one transaction: of two processes resuming one study, one claims it and the other is refused."""
        with self.transaction():
            row = self._db.execute("SELECT * FROM tuneloop_studies WHERE id=?", (study_id,)).fetchone()
            if row is None:
                names = self._db.execute("SELECT id FROM tuneloop_studies ORDER BY created_at")
                known = ", ".join(r["id"] for r in names)
                raise RunNotFoundError(f"{self.root}: no study '{study_id}'. Studies here: {known or 'none'}.")
            if row["status"] == "running":
                raise TuneloopError(f"study '{study_id}' is running in process {row['pid']} on {row['host']}.")
            self._db.execute("UPDATE tuneloop_studies SET status='running', host=?, pid=?, process=?, "
                             "stop_reason=NULL WHERE id=?",
                             (socket.gethostname(), os.getpid(), process_identity(os.getpid()), study_id))
        return {**dict(row), "options": json.loads(row["options"])}

    def finish_study(self, study_id: str, reason: str, choice: str | None = None) -> None:
        """The study is over: why the search stopped, and how its final model was chosen (the seed check's
        verdict or why it did not run; or cross-validation and a final fit on every labelled example)."""
        with self.transaction():
            self._db.execute("UPDATE tuneloop_studies SET status='finished', stop_reason=?, choice=? WHERE id=?",
                             (reason, choice, study_id))

    def add_spent(self, study_id: str, seconds: float) -> float:
        with self.transaction():
            self._db.execute("UPDATE tuneloop_studies SET spent_seconds = spent_seconds + ? WHERE id=?",
                             (seconds, study_id))
        return self._db.execute("SELECT spent_seconds FROM tuneloop_studies WHERE id=?", (study_id,)).fetchone()[0]

    def start_trial(self, study_id: str, number: int, optuna_number: int, recipe: dict[str, Any], reason: str,
                    parent: int | None = None) -> None:
        """A trial, 'running'; ``parent`` is the trial whose recipe its move changed (None for a first trial or
        a sampled one)."""
        with self.transaction():
            self._db.execute("INSERT INTO tuneloop_trials (study_id, number, optuna_number, status, recipe, reason, "
                             "parent) VALUES (?, ?, ?, 'running', ?, ?, ?)",
                             (study_id, number, optuna_number, json.dumps(recipe), reason, parent))

    def end_trial(self, study_id: str, number: int, *, status: str, run_id: str | None, value: float | None,
                  diagnosis: str | None, summary: str | None, evidence: dict[str, Any] | None,
                  seconds: float, no_effect: str | None = None, predictions: list[float] | None = None) -> None:
        """The trial's outcome; ``no_effect`` says which earlier trial it repeats, ``predictions`` are its
        validation predictions (class ids or values) for comparing later trials with it."""
        with self.transaction():
            self._db.execute(
                "UPDATE tuneloop_trials SET status=?, run_id=?, value=?, diagnosis=?, diagnosis_summary=?, evidence=?, "
                "seconds=?, no_effect=?, predictions=? WHERE study_id=? AND number=?",
                (status, run_id, value, diagnosis, summary, json.dumps(evidence) if evidence else None, seconds,
                 no_effect or None, json.dumps(predictions) if predictions is not None else None, study_id, number))

    def trials(self, study_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM tuneloop_trials WHERE study_id=? ORDER BY number",
                                (study_id,)).fetchall()
        return [{**dict(r), "recipe": json.loads(r["recipe"]), "evidence": json.loads(r["evidence"] or "{}"),
                 "predictions": json.loads(r["predictions"]) if r["predictions"] else None} for r in rows]

    def study_of(self, run_id: str) -> str | None:
        """The study whose trial trained ``run_id``, or None for a run of its own (``fit``)."""
        row = self._db.execute("SELECT study_id FROM tuneloop_trials WHERE run_id=? LIMIT 1", (run_id,)).fetchone()
        return row[0] if row else None

    def studies(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM tuneloop_studies ORDER BY created_at").fetchall()
        return [{**dict(r), "options": json.loads(r["options"])} for r in rows]

    def discard_model(self, run_id: str, why: str) -> int:
        """Remove a completed run's model folder to bound the disk; its record, metrics and epochs stay, with
        ``why``. Returns the bytes freed (files still linked from elsewhere, such as an ensemble, free none)."""
        row = self._db.execute("SELECT artifact FROM runs WHERE id=? AND status='completed'", (run_id,)).fetchone()
        if row is None or row["artifact"] is None:
            return 0
        folder = self.root / row["artifact"]
        freed = disk_bytes(folder, unique_only=True)
        with self.transaction():  # the record first: a kill before the folder goes leaves an orphan gc removes
            self._db.execute("UPDATE runs SET artifact=NULL, error=? WHERE id=?", (why, run_id))
        shutil.rmtree(folder, ignore_errors=True)
        return freed

    def registered_run_ids(self) -> set[str]:
        """Runs whose model a registry version uses: never removed."""
        return {row[0] for row in self._db.execute("SELECT run_id FROM registry_versions")}

    def orphan_folders(self) -> list[Path]:
        """Model folders no run points at (a kill between a model's removal and its folder's)."""
        if not self.artifacts.is_dir():
            return []
        used = {row[0] for row in self._db.execute("SELECT artifact FROM runs WHERE artifact IS NOT NULL")}
        return [p for p in self.artifacts.iterdir() if p.is_dir() and not p.name.startswith(".")
                and str(p.relative_to(self.root)) not in used]

    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk by part: models, the feature cache, checkpoints, the registry, the database."""
        parts = {"models": self.artifacts, "feature cache": self.root / "cache",
                 "checkpoints": self.root / "checkpoints", "registry": self.root / "registry"}
        usage = {name: disk_bytes(folder) for name, folder in parts.items()}
        usage["database"] = sum(f.stat().st_size for f in self.root.glob("tuneloop.db*") if f.is_file())
        return usage

    def _remove_partials(self, run_id: str) -> None:
        if self.artifacts.is_dir():
            for partial in self.artifacts.glob(f".{run_id}.*.partial"):
                shutil.rmtree(partial, ignore_errors=True)

    # -- reading ----------------------------------------------------------------------------------------

    def runs(self) -> list[RunRecord]:
        rows = self._db.execute("SELECT * FROM runs ORDER BY created_at, id").fetchall()
        return [self._record(row) for row in rows]

    def run_metrics(self, run_id: str) -> dict[str, Any]:
        """The metrics a run recorded (empty for a run without)."""
        row = self._db.execute("SELECT metrics FROM runs WHERE id=?", (run_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else {}

    def epochs(self, run_id: str) -> list[dict[str, float]]:
        rows = self._db.execute("SELECT * FROM epochs WHERE run_id=? ORDER BY epoch", (run_id,)).fetchall()
        return [dict(row) for row in rows]

    def resolve(self, reference: str) -> RunRecord:
        """A completed run by id, unique id prefix, or 'latest' (the latest whose model is kept)."""
        completed = [r for r in self.runs() if r.status == "completed"]
        if reference == "latest":
            kept = [r for r in completed if r.artifact is not None]
            if not kept:
                raise RunNotFoundError(f"{self.root}: the workspace has no completed run with a model yet.")
            return kept[-1]
        matches = [r for r in completed if r.id == reference] or [r for r in completed if r.id.startswith(reference)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            other = [r for r in self.runs() if r.id.startswith(reference)]
            if other:
                raise RunNotFoundError(f"run '{other[0].id}' has status '{other[0].status}'; "
                                       "only completed runs have a model.")
            recent = ", ".join(r.id for r in completed[-5:]) or "none"
            raise RunNotFoundError(f"{self.root}: no run '{reference}'. Recent completed runs: {recent}. "
                                   "'tuneloop runs' lists them all.")
        raise RunNotFoundError(f"'{reference}' matches {len(matches)} runs ({', '.join(r.id for r in matches)}); "
                               "give more of the id.")

    def _record(self, row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            id=row["id"], created_at=row["created_at"], finished_at=row["finished_at"], status=row["status"],
            task=row["task"], adapter=row["adapter"], backbone=row["backbone"], train_source=row["train_source"],
            val_source=row["val_source"], n_train=row["n_train"], n_val=row["n_val"],
            recipe=json.loads(row["recipe"]), metrics=json.loads(row["metrics"] or "{}"),
            best_epoch=row["best_epoch"], seconds=row["seconds"],
            artifact=self.root / row["artifact"] if row["artifact"] else None,
            train_fingerprint=row["train_fingerprint"], val_fingerprint=row["val_fingerprint"],
            data_options=json.loads(row["data_options"]) if row["data_options"] else None, note=row["error"])
