"""The workspace folder: ``tuneloop.db`` (SQLite, WAL) with runs and their per-epoch metrics, and
``artifacts/<run id>/`` with each finished run's model. With a PostgreSQL store the tables live in that
database instead (``database.py``) and the folder, which every worker must reach, keeps the models, caches and
checkpoints, and the store's URL in ``store.url`` (so that any process that opens the folder finds them).

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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.errors import ConfigError, RunNotFoundError, TuneloopError
from tuneloop.store.atomic import write_text_atomic
from tuneloop.store.database import PostgresDatabase, SQLiteDatabase, is_postgres, redact

if TYPE_CHECKING:
    import optuna

DEFAULT_WORKSPACE = "tuneloop-runs"
SCHEMA_VERSION = 8  # 2: regression metrics per epoch, classification metrics nullable; 3: the registry, and
# each run's data options (how its data was read and split); 4: each trial's parent, its validation predictions
# and whether it had no effect; 5: the identity of the process that runs a run or study (its start time with
# its PID: PIDs are reused); 6: forecasters' MASE and sMAPE per epoch; 7: a study's lease (the time until which
# its driver holds it, renewed by a heartbeat); 8: drift checks (a new table only); see _upgrade_from_1 to
# _upgrade_from_6
STORE_FILE = "store.url"  # in a workspace folder whose tables are in PostgreSQL: the store's URL
STORE_ENV = "TUNELOOP_STORE"
# A study whose driver has not renewed its lease for this long may be taken over by another process.
LEASE_SECONDS = float(os.environ.get("TUNELOOP_LEASE_SECONDS", 60))


def host_name() -> str:
    """The name runs and studies record for this machine: $TUNELOOP_HOST where machines share a hostname
    (containers can), else the hostname."""
    return os.environ.get("TUNELOOP_HOST") or socket.gethostname()
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
    process TEXT,
    lease_until REAL
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
CREATE TABLE IF NOT EXISTS drift_checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    at TEXT NOT NULL,
    data_source TEXT NOT NULL,
    report TEXT NOT NULL
);
"""


def _create_tables(connection: Database) -> None:
    """Each CREATE of SCHEMA on its own (executescript would commit the caller's transaction first)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            connection.execute(connection.ddl(statement))


def _upgrade_from_1(connection: Database) -> None:
    """Schema 1 -> 2, inside the caller's transaction: SQLite cannot drop a NOT NULL constraint, so the
    epochs table is rebuilt with the classification columns nullable and the regression ones added."""
    connection.execute("ALTER TABLE epochs RENAME TO epochs_schema1")
    _create_tables(connection)
    connection.execute("INSERT INTO epochs (run_id, epoch, train_loss, val_loss, val_accuracy, val_macro_f1, "
                       "learning_rate, train_samples_per_s, seconds) SELECT run_id, epoch, train_loss, val_loss, "
                       "val_accuracy, val_macro_f1, learning_rate, train_samples_per_s, seconds FROM epochs_schema1")
    connection.execute("DROP TABLE epochs_schema1")


def _upgrade_from_2(connection: Database) -> None:
    """Schema 2 -> 3, inside the caller's transaction: runs gain their data options (the registry tables are
    new, and created with the others)."""
    if "data_options" not in connection.columns("runs"):
        connection.execute("ALTER TABLE runs ADD COLUMN data_options TEXT")


def _upgrade_from_3(connection: Database) -> None:
    """Schema 3 -> 4, inside the caller's transaction: trials gain the trial their move started from, whether
    they changed nothing (the sentence that says so), and their validation predictions (to tell that)."""
    columns = connection.columns("tuneloop_trials")
    for name, kind in (("parent", "INTEGER"), ("no_effect", "TEXT"), ("predictions", "TEXT")):
        if name not in columns:
            connection.execute(f"ALTER TABLE tuneloop_trials ADD COLUMN {name} {kind}")
    if "choice" not in connection.columns("tuneloop_studies"):
        connection.execute("ALTER TABLE tuneloop_studies ADD COLUMN choice TEXT")


def _upgrade_from_4(connection: Database) -> None:
    """Schema 4 -> 5, inside the caller's transaction: runs and studies gain the identity of their process."""
    for table in ("runs", "tuneloop_studies"):
        if "process" not in connection.columns(table):
            connection.execute(f"ALTER TABLE {table} ADD COLUMN process TEXT")


def _upgrade_from_5(connection: Database) -> None:
    """Schema 5 -> 6, inside the caller's transaction: epochs gain a forecaster's MASE and sMAPE."""
    columns = connection.columns("epochs")
    for name in ("val_mase", "val_smape"):
        if name not in columns:
            connection.execute(connection.ddl(f"ALTER TABLE epochs ADD COLUMN {name} REAL"))


def _upgrade_from_6(connection: Database) -> None:
    """Schema 6 -> 7, inside the caller's transaction: studies gain a lease."""
    if "lease_until" not in connection.columns("tuneloop_studies"):
        connection.execute(connection.ddl("ALTER TABLE tuneloop_studies ADD COLUMN lease_until REAL"))


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


def _driver_alive(row: Any) -> bool:
    """Whether the driver of the running study ``row`` still lives: its lease (renewed by its heartbeat) has not
    run out, and on this host its process has not ended either. Leases are wall-clock times: the hosts' clocks
    must agree to within a few seconds."""
    lease = row["lease_until"]
    if lease is not None and lease < time.time():
        return False
    if row["host"] == host_name():
        return process_alive(row["pid"], row["process"])
    return True  # another host's, within its lease (or from an older tuneloop, without one: cannot tell)


class StudyLease:
    """The heartbeat of a study's driver: a thread that renews its lease every LEASE_SECONDS / 4, on a connection
    of its own. ``lost`` turns true where another process took the study over."""

    def __init__(self, path: str | os.PathLike, study_id: str, store: str | None = None):
        self.path, self.study_id, self.store = path, study_id, store
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{study_id}", daemon=True)

    def __enter__(self) -> StudyLease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        with Workspace.open(self.path, store=self.store) as store:
            while not self._stop.wait(LEASE_SECONDS / 4):
                if not store.renew_lease(self.study_id):
                    self.lost = True
                    return


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


EPOCH_COLUMNS = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "learning_rate", "train_samples_per_s",
                 "seconds", "val_mae", "val_rmse", "val_r2", "val_mase", "val_smape")


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


Database = SQLiteDatabase | PostgresDatabase


def _recorded_store(root: Path) -> str | None:
    """The store URL the workspace folder ``root`` records, or None."""
    file = root / STORE_FILE
    return file.read_text().strip() if file.is_file() else None


def store_url(root: Path, store: str | None = None) -> str | None:
    """The PostgreSQL store the workspace at ``root`` uses: ``store``, else $TUNELOOP_STORE, else the one its
    folder records; None for its own SQLite database."""
    url = store or os.environ.get(STORE_ENV) or _recorded_store(root)
    if url and not is_postgres(url):
        raise ConfigError([f"The 'store' parameter must be a PostgreSQL URL (postgresql://user@host/database), or "
                           f"left out for the workspace's own SQLite database. Got {redact(url)!r} instead."])
    return url or None


class Workspace:
    def __init__(self, root: Path, connection: Database):
        self.root = root
        self.artifacts = root / "artifacts"
        self._db = connection

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, create: bool = False,
             store: str | None = None, read_only: bool = False) -> Workspace:
        """The workspace at ``path`` (see ``workspace_root``), its tables in its own SQLite database or in the
        PostgreSQL ``store`` (see ``store_url``); with ``create``, made where there is none. ``read_only``: the
        database refuses writes on this connection, and opening changes nothing (no upgrade, no marking of
        killed runs), for readers such as the dashboard that must never write."""
        root = workspace_root(path)
        url = store_url(root, store)
        if read_only:
            return cls._open_read_only(root, url)
        database = cls._postgres(root, url, create) if url else cls._sqlite(root, create)
        # One write transaction, version read inside it: two processes opening an old workspace at once
        # upgrade it once, and a crash mid-upgrade leaves schema 1 as it was.
        database.begin_write()
        try:
            version = database.schema_version()
            if version > SCHEMA_VERSION:
                raise TuneloopError(f"{database.describe()}: written by a newer tuneloop (schema {version}; "
                                    f"this one reads {SCHEMA_VERSION}). Upgrade tuneloop.")
            upgrades = (_upgrade_from_1, _upgrade_from_2, _upgrade_from_3, _upgrade_from_4, _upgrade_from_5,
                        _upgrade_from_6)
            for start, upgrade in enumerate(upgrades, start=1):
                if 1 <= version <= start:
                    upgrade(database)
            _create_tables(database)
            database.set_schema_version(SCHEMA_VERSION)
            database.commit()
        except BaseException:
            database.rollback()
            database.close()
            raise
        workspace = cls(root, database)
        workspace._mark_interrupted()
        return workspace

    @classmethod
    def _open_read_only(cls, root: Path, url: str | None) -> Workspace:
        if url:
            if _recorded_store(root) not in (None, url):
                raise ConfigError([f"{root}: this workspace's runs are in the store "
                                   f"{redact(_recorded_store(root))}, not {redact(url)}."])
            database: Database = PostgresDatabase(url, read_only=True)
        else:
            if not (root / "tuneloop.db").exists():
                raise RunNotFoundError(f"{root}: no tuneloop workspace here (no tuneloop.db). Train a model with "
                                       "'tuneloop fit' first, or point --workspace at one.")
            database = SQLiteDatabase(root / "tuneloop.db", read_only=True)
        version = database.schema_version()
        if version != SCHEMA_VERSION:
            database.close()
            newer = "a newer tuneloop wrote it: upgrade tuneloop" if version > SCHEMA_VERSION else (
                "an older tuneloop wrote it: any command that writes, such as 'tuneloop runs', upgrades it")
            raise TuneloopError(f"{database.describe()}: schema {version}, and this tuneloop reads "
                                f"{SCHEMA_VERSION} ({newer}).")
        return cls(root, database)

    @staticmethod
    def _sqlite(root: Path, create: bool) -> SQLiteDatabase:
        db_path = root / "tuneloop.db"
        if not db_path.exists() and not create:
            raise RunNotFoundError(f"{root}: no tuneloop workspace here (no tuneloop.db). "
                                   "Train a model with 'tuneloop fit' first, or point --workspace at one.")
        root.mkdir(parents=True, exist_ok=True)
        return SQLiteDatabase(db_path)

    @staticmethod
    def _postgres(root: Path, url: str, create: bool) -> PostgresDatabase:
        """The store at ``url`` for the folder ``root``, which records it (with the password, so readable by
        its owner only: prefer a password file, ~/.pgpass, to one in the URL)."""
        if (root / "tuneloop.db").exists():
            raise ConfigError([f"{root}: this workspace keeps its runs in its own SQLite database (tuneloop.db); "
                               f"a PostgreSQL store ({redact(url)}) needs a workspace folder of its own."])
        recorded = _recorded_store(root)
        if recorded and recorded != url:
            raise ConfigError([f"{root}: this workspace's runs are in the store {redact(recorded)}, not "
                               f"{redact(url)}."])
        if recorded is None and not create:
            raise RunNotFoundError(f"{root}: no tuneloop workspace here (no {STORE_FILE}). Train a model with "
                                   "'tuneloop fit --store URL' first, or point --workspace at one.")
        database = PostgresDatabase(url)
        if recorded is None:
            root.mkdir(parents=True, exist_ok=True)
            write_text_atomic(root / STORE_FILE, url + "\n")
            os.chmod(root / STORE_FILE, 0o600)
        return database

    def optuna_storage(self) -> optuna.storages.RDBStorage:
        """Optuna's storage of the studies' search state, in the workspace's database (workers reach it too)."""
        import optuna

        return optuna.storages.RDBStorage(self._db.optuna_url(), engine_kwargs=self._db.optuna_engine_kwargs())

    @property
    def store(self) -> str | None:
        """The PostgreSQL store's URL, or None where the tables are in the folder's own SQLite database."""
        return getattr(self._db, "url", None)

    @property
    def connection(self) -> Database:
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
        self._db.begin_write()
        try:
            yield
            self._db.commit()
        except BaseException:
            if self._db.in_transaction:  # some SQLite errors end the transaction themselves
                self._db.rollback()
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
                 val_fingerprint, n_train, n_val, json.dumps(recipe), host_name(), os.getpid(),
                 json.dumps(data_options) if data_options is not None else None, process_identity(os.getpid())))
        return run_id

    def record_epoch(self, run_id: str, epoch: dict[str, float]) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO epochs (run_id, epoch, train_loss, val_loss, val_accuracy, val_macro_f1, "
                "learning_rate, train_samples_per_s, seconds, val_mae, val_rmse, val_r2, val_mase, val_smape) VALUES "
                "(:run_id, :epoch, :train_loss, :val_loss, :val_accuracy, :val_macro_f1, :learning_rate, "
                ":train_samples_per_s, :seconds, :val_mae, :val_rmse, :val_r2, :val_mase, :val_smape) "
                "ON CONFLICT (run_id, epoch) DO UPDATE SET " + ", ".join(
                    f"{c} = excluded.{c}" for c in EPOCH_COLUMNS),
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
        Their trials, and studies whose driver is gone, are marked interrupted too, each study with its
        trials in one transaction. A process is gone when its PID is free or held by a later process; a
        study's driver, on any host, when it has not renewed its lease for LEASE_SECONDS."""
        host = host_name()
        for row in self._db.execute("SELECT id, pid, process FROM runs WHERE status='running' AND host=?",
                                    (host,)).fetchall():
            if not process_alive(row["pid"], row["process"]):
                self.fail_run(row["id"], "the process ended before the run finished", status="interrupted")
        for row in self._db.execute("SELECT * FROM tuneloop_studies WHERE status='running'").fetchall():
            if not _driver_alive(row):
                with self.transaction():
                    self._interrupt_study(row)

    def _interrupt_study(self, row: Any) -> None:
        """Inside the caller's transaction: the study whose driver ``row`` records is gone."""
        self._db.execute("UPDATE tuneloop_studies SET status='interrupted' WHERE id=? AND status='running' "
                         "AND pid=? AND host=?", (row["id"], row["pid"], row["host"]))
        self._db.execute("UPDATE tuneloop_trials SET status='interrupted' WHERE study_id=? AND status='running'",
                         (row["id"],))

    # -- studies ----------------------------------------------------------------------------------------

    def create_study(self, study_id: str, strategy: str, metric: str, options: dict[str, Any]) -> None:
        if self._db.execute("SELECT 1 FROM tuneloop_studies WHERE id=?", (study_id,)).fetchone():
            raise TuneloopError(f"{self.root}: a study named '{study_id}' exists already. Continue it with "
                                f"'tuneloop tune --resume {study_id}' or choose another --name.")
        with self.transaction():
            self._db.execute("INSERT INTO tuneloop_studies (id, created_at, status, strategy, metric, options, host, "
                             "pid, process, lease_until) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                             (study_id, _now(), strategy, metric, json.dumps(options), host_name(),
                              os.getpid(), process_identity(os.getpid()), time.time() + LEASE_SECONDS))

    def claim_study(self, study_id: str) -> dict[str, Any]:
        """Take over an interrupted or finished study in this process, or a running one whose driver is gone (its
        lease expired, or its process on this host ended), and return its row. The check and the claim are one
        transaction: of two processes resuming one study, one claims it and the other is refused."""
        with self.transaction():
            row = self._db.execute("SELECT * FROM tuneloop_studies WHERE id=?", (study_id,)).fetchone()
            if row is None:
                names = self._db.execute("SELECT id FROM tuneloop_studies ORDER BY created_at")
                known = ", ".join(r["id"] for r in names)
                raise RunNotFoundError(f"{self.root}: no study '{study_id}'. Studies here: {known or 'none'}.")
            if row["status"] == "running":
                if _driver_alive(row):
                    left = (row["lease_until"] or 0) - time.time()
                    raise TuneloopError(f"study '{study_id}' is running in process {row['pid']} on {row['host']} "
                                        f"(its lease has {max(0.0, left):.0f}s to run, and its driver renews it while "
                                        "it lives).")
                self._interrupt_study(row)
            self._db.execute("UPDATE tuneloop_studies SET status='running', host=?, pid=?, process=?, "
                             "stop_reason=NULL, lease_until=? WHERE id=?",
                             (host_name(), os.getpid(), process_identity(os.getpid()),
                              time.time() + LEASE_SECONDS, study_id))
        return {**dict(row), "options": json.loads(row["options"])}

    def renew_lease(self, study_id: str) -> bool:
        """Extend this process's lease on a study it drives; False where it no longer holds it (taken over)."""
        with self.transaction():
            cursor = self._db.execute("UPDATE tuneloop_studies SET lease_until=? WHERE id=? AND status='running' "
                                      "AND host=? AND pid=?", (time.time() + LEASE_SECONDS, study_id,
                                                               host_name(), os.getpid()))
        return cursor.rowcount > 0

    def holds_study(self, study_id: str) -> bool:
        """Whether this process is still the study's driver (no other process took it over)."""
        row = self._db.execute("SELECT status, host, pid FROM tuneloop_studies WHERE id=?", (study_id,)).fetchone()
        return row is not None and (row["status"], row["host"], row["pid"]) == ("running", host_name(),
                                                                                 os.getpid())

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

    def record_drift(self, name: str, version: int, data_source: str, report: dict[str, Any]) -> None:
        """A drift check of version ``version`` of ``name`` on ``data_source``: its report, kept for the history."""
        with self.transaction():
            self._db.execute("INSERT INTO drift_checks (name, version, at, data_source, report) VALUES (?, ?, ?, ?, ?)",
                             (name, version, _now(), data_source, json.dumps(report, default=str)))

    # -- reading ----------------------------------------------------------------------------------------

    def drift_checks(self, name: str) -> list[dict[str, Any]]:
        """The drift checks of ``name``'s versions, latest first."""
        rows = self._db.execute("SELECT * FROM drift_checks WHERE name=? ORDER BY id DESC", (name,)).fetchall()
        return [{**dict(r), "report": json.loads(r["report"])} for r in rows]

    def runs(self) -> list[RunRecord]:
        rows = self._db.execute("SELECT * FROM runs ORDER BY created_at, id").fetchall()
        return [self._record(row) for row in rows]

    def run(self, run_id: str) -> RunRecord | None:
        """The run ``run_id`` (exactly), whatever its status; None where there is none."""
        row = self._db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return self._record(row) if row else None

    def run_studies(self) -> dict[str, str]:
        """The study each run a trial trained belongs to, by run id."""
        rows = self._db.execute("SELECT run_id, study_id FROM tuneloop_trials WHERE run_id IS NOT NULL").fetchall()
        return {row[0]: row[1] for row in rows}

    def run_status(self, run_id: str | None) -> str | None:
        """A run's status, or None where there is no such run."""
        row = self._db.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()
        return row[0] if row else None

    def run_metrics(self, run_id: str) -> dict[str, Any]:
        """The metrics a run recorded (empty for a run without)."""
        row = self._db.execute("SELECT metrics FROM runs WHERE id=?", (run_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else {}

    def epochs(self, run_id: str) -> list[dict[str, float]]:
        rows = self._db.execute("SELECT * FROM epochs WHERE run_id=? ORDER BY epoch", (run_id,)).fetchall()
        return [dict(row) for row in rows]

    def epoch_counts(self, study_id: str) -> dict[str, int]:
        """Epochs recorded so far by each run of the study's trials, by run id (runs without one left out)."""
        rows = self._db.execute("SELECT run_id, COUNT(*) FROM epochs WHERE run_id IN "
                                "(SELECT run_id FROM tuneloop_trials WHERE study_id=?) GROUP BY run_id",
                                (study_id,)).fetchall()
        return {row[0]: row[1] for row in rows}

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

    def _record(self, row: Any) -> RunRecord:
        return RunRecord(
            id=row["id"], created_at=row["created_at"], finished_at=row["finished_at"], status=row["status"],
            task=row["task"], adapter=row["adapter"], backbone=row["backbone"], train_source=row["train_source"],
            val_source=row["val_source"], n_train=row["n_train"], n_val=row["n_val"],
            recipe=json.loads(row["recipe"]), metrics=json.loads(row["metrics"] or "{}"),
            best_epoch=row["best_epoch"], seconds=row["seconds"],
            artifact=self.root / row["artifact"] if row["artifact"] else None,
            train_fingerprint=row["train_fingerprint"], val_fingerprint=row["val_fingerprint"],
            data_options=json.loads(row["data_options"]) if row["data_options"] else None, note=row["error"])
