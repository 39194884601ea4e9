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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import RunNotFoundError, TuneloopError

DEFAULT_WORKSPACE = "tuneloop-runs"
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'interrupted')),
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
    pid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id),
    epoch INTEGER NOT NULL,
    train_loss REAL NOT NULL,
    val_loss REAL NOT NULL,
    val_accuracy REAL NOT NULL,
    val_macro_f1 REAL NOT NULL,
    learning_rate REAL NOT NULL,
    train_samples_per_s REAL NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
"""


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
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise TuneloopError(f"{db_path}: written by a newer tuneloop (schema {version}; "
                                f"this one reads {SCHEMA_VERSION}). Upgrade tuneloop.")
        with connection:
            connection.executescript(SCHEMA)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        workspace = cls(root, connection)
        workspace._mark_interrupted()
        return workspace

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs -------------------------------------------------------------------------------------------

    def start_run(self, *, task: str, adapter: str, backbone: str, train_source: str, val_source: str,
                  train_fingerprint: str, val_fingerprint: str, n_train: int, n_val: int,
                  recipe: dict[str, Any]) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        with self._db:
            self._db.execute(
                "INSERT INTO runs (id, created_at, status, task, adapter, backbone, train_source, val_source, "
                "train_fingerprint, val_fingerprint, n_train, n_val, recipe, host, pid) "
                "VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, _now(), task, adapter, backbone, train_source, val_source, train_fingerprint,
                 val_fingerprint, n_train, n_val, json.dumps(recipe), socket.gethostname(), os.getpid()))
        return run_id

    def record_epoch(self, run_id: str, epoch: dict[str, float]) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO epochs (run_id, epoch, train_loss, val_loss, val_accuracy, val_macro_f1, "
                "learning_rate, train_samples_per_s, seconds) VALUES (:run_id, :epoch, :train_loss, :val_loss, "
                ":val_accuracy, :val_macro_f1, :learning_rate, :train_samples_per_s, :seconds)",
                {"run_id": run_id, **epoch})

    def artifact_dir(self, run_id: str) -> Path:
        return self.artifacts / run_id

    def complete_run(self, run_id: str, metrics: dict[str, Any], best_epoch: int, seconds: float) -> None:
        """Mark the run completed; its artifact folder must already be in place."""
        artifact = self.artifact_dir(run_id)
        if not artifact.is_dir():
            raise RuntimeError(f"run {run_id} has no artifact folder at {artifact}")
        with self._db:
            self._db.execute(
                "UPDATE runs SET status='completed', finished_at=?, metrics=?, best_epoch=?, seconds=?, artifact=? "
                "WHERE id=?",
                (_now(), json.dumps(metrics), best_epoch, seconds, str(artifact.relative_to(self.root)), run_id))

    def fail_run(self, run_id: str, error: str, status: str = "failed") -> None:
        with self._db:
            self._db.execute("UPDATE runs SET status=?, finished_at=?, error=? WHERE id=? AND status='running'",
                             (status, _now(), error, run_id))
        self._remove_partials(run_id)

    def _mark_interrupted(self) -> None:
        """Runs of this host whose process is gone were killed: say so, and drop their partial folders."""
        host = socket.gethostname()
        for row in self._db.execute("SELECT id, pid FROM runs WHERE status='running' AND host=?", (host,)).fetchall():
            if not _process_alive(row["pid"]):
                self.fail_run(row["id"], "the process ended before the run finished", status="interrupted")

    def _remove_partials(self, run_id: str) -> None:
        if self.artifacts.is_dir():
            for partial in self.artifacts.glob(f".{run_id}.*.partial"):
                shutil.rmtree(partial, ignore_errors=True)

    # -- reading ----------------------------------------------------------------------------------------

    def runs(self) -> list[RunRecord]:
        rows = self._db.execute("SELECT * FROM runs ORDER BY created_at, id").fetchall()
        return [self._record(row) for row in rows]

    def epochs(self, run_id: str) -> list[dict[str, float]]:
        rows = self._db.execute("SELECT * FROM epochs WHERE run_id=? ORDER BY epoch", (run_id,)).fetchall()
        return [dict(row) for row in rows]

    def resolve(self, reference: str) -> RunRecord:
        """A completed run by id, unique id prefix, or 'latest'."""
        completed = [r for r in self.runs() if r.status == "completed"]
        if reference == "latest":
            if not completed:
                raise RunNotFoundError(f"{self.root}: the workspace has no completed run yet.")
            return completed[-1]
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
            artifact=self.root / row["artifact"] if row["artifact"] else None)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
