import os
import subprocess
import sys
import threading
import time

import pytest

from tuneloop.errors import RunNotFoundError
from tuneloop.store.atomic import write_dir_atomic
from tuneloop.store.workspace import Workspace

RUN = dict(task="t", adapter="hf_text", backbone="b", train_source="a.csv", val_source="a.csv",
           train_fingerprint="f", val_fingerprint="g", n_train=1, n_val=1, recipe={})


def test_opening_for_reading_creates_nothing(tmp_path):
    with pytest.raises(RunNotFoundError, match="no tuneloop workspace here"):
        Workspace.open(tmp_path / "ws")
    assert not (tmp_path / "ws").exists()


def test_a_run_is_completed_only_with_its_folder(tmp_path, store):
    with Workspace.open(tmp_path, create=True, store=store) as ws:
        run_id = ws.start_run(**RUN)
        with pytest.raises(RuntimeError):
            ws.complete_run(run_id, {}, 1, 1.0)
        write_dir_atomic(ws.artifact_dir(run_id), lambda d: (d / "x").write_text("1"))
        ws.complete_run(run_id, {"val_accuracy": 1.0}, 1, 1.0)
        assert ws.resolve("latest").id == run_id
        assert ws.resolve(run_id[:10]).artifact == ws.artifact_dir(run_id)


def test_failed_fill_leaves_no_folder(tmp_path):
    def fill(folder):
        (folder / "weights").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_dir_atomic(tmp_path / "run", fill)
    assert list(tmp_path.iterdir()) == []


def test_run_of_a_killed_process_is_marked_interrupted(tmp_path, store):
    script = (
        "import os, sys; from tuneloop.store.workspace import Workspace\n"
        f"ws = Workspace.open({str(tmp_path)!r}, create=True, store={store!r})\n"
        f"run = ws.start_run(**{RUN!r})\n"
        "ws.artifacts.mkdir(); (ws.artifacts / f'.{run}.x.partial').mkdir()\n"
        "os._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=False)
    with Workspace.open(tmp_path) as ws:
        (record,) = ws.runs()
        assert record.status == "interrupted"
        assert list(ws.artifacts.iterdir()) == []
        with pytest.raises(RunNotFoundError, match="has status 'interrupted'"):
            ws.resolve(record.id)


def test_a_schema_1_workspace_is_upgraded_in_place_keeping_its_epochs(tmp_path):
    import sqlite3

    from tuneloop.store.workspace import SCHEMA

    old = SCHEMA.replace("val_accuracy REAL,", "val_accuracy REAL NOT NULL,").replace(
        "val_macro_f1 REAL,", "val_macro_f1 REAL NOT NULL,").replace(
        "    val_mae REAL,\n    val_rmse REAL,\n    val_r2 REAL,\n    val_mase REAL,\n    val_smape REAL,\n",
        "").replace(
        "    pid INTEGER NOT NULL,\n    data_options TEXT\n", "    pid INTEGER NOT NULL\n").split(
        "CREATE TABLE IF NOT EXISTS registry_versions")[0]
    db = sqlite3.connect(tmp_path / "tuneloop.db")
    db.executescript(old)
    db.execute("INSERT INTO runs (id, created_at, status, task, adapter, backbone, train_source, val_source, "
               "train_fingerprint, val_fingerprint, n_train, n_val, recipe, host, pid) VALUES ('r1', 'now', "
               "'completed', 't', 'hf_text', 'b', 'a', 'a', 'f', 'g', 1, 1, '{}', 'h', 1)")
    db.execute("INSERT INTO epochs VALUES ('r1', 1, 0.5, 0.4, 0.9, 0.8, 1e-3, 10.0, 1.0)")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    with Workspace.open(tmp_path) as ws:
        assert ws.epochs("r1") == [{"run_id": "r1", "epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.9,
                                    "val_macro_f1": 0.8, "learning_rate": 1e-3, "train_samples_per_s": 10.0,
                                    "seconds": 1.0, "val_mae": None, "val_rmse": None, "val_r2": None, "val_mase": None,
                                    "val_smape": None}]
        ws.record_epoch("r1", {"epoch": 2, "train_loss": 0.3, "val_loss": 0.2, "val_accuracy": None,
                               "val_macro_f1": None, "learning_rate": 1e-3, "train_samples_per_s": 10.0,
                               "seconds": 1.0, "val_mae": 1.5, "val_rmse": 2.0, "val_r2": 0.6})
        assert ws.epochs("r1")[1]["val_r2"] == 0.6
    db = sqlite3.connect(tmp_path / "tuneloop.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 8
    assert "process" in {row[1] for row in db.execute("PRAGMA table_info(runs)")}


def test_a_study_whose_pid_now_belongs_to_another_process_is_interrupted(tmp_path, store):
    """PIDs are reused: a study recorded with this process's PID but another process's start is not alive."""
    from tuneloop.store.workspace import process_identity

    assert process_identity(1) != process_identity(os.getpid()), "two processes, two identities"
    with Workspace.open(tmp_path, create=True, store=store) as ws:
        ws.create_study("s", "guided", "accuracy", {})
        ws.connection.execute("UPDATE tuneloop_studies SET process='an-earlier-boot:12345' WHERE id='s'")
        ws.create_study("mine", "guided", "accuracy", {})
    with Workspace.open(tmp_path) as ws:
        statuses = dict(ws.connection.execute("SELECT id, status FROM tuneloop_studies").fetchall())
    assert statuses == {"s": "interrupted", "mine": "running"}, "the live one, recorded as itself, still runs"


def test_of_two_resumes_of_one_study_only_one_claims_it(tmp_path, store):
    """The check and the claim are one transaction: a resume that reads the study while another process is
    claiming it waits for that claim, sees it, and is refused (it does not claim the study as well)."""
    from tuneloop.errors import TuneloopError
    from tuneloop.store.workspace import process_identity

    with Workspace.open(tmp_path, create=True, store=store) as ws:
        ws.create_study("s", "guided", "accuracy", {})
        ws.connection.execute("UPDATE tuneloop_studies SET status='interrupted' WHERE id='s'")
    first = Workspace.open(tmp_path)
    outcome: list[str] = []
    opened, go = threading.Event(), threading.Event()

    def claim() -> None:
        with Workspace.open(tmp_path) as second:  # opened before the first resume takes the lock
            opened.set()
            go.wait(timeout=30)
            try:
                second.claim_study("s")
                outcome.append("claimed")
            except TuneloopError as error:
                outcome.append(str(error))

    racer = threading.Thread(target=claim)
    racer.start()
    assert opened.wait(timeout=30)
    first.connection.begin_write()  # the first resume, mid-claim, holds the write lock
    go.set()
    time.sleep(0.5)
    assert outcome == [], "the second resume waits for the first one's transaction"
    first.connection.execute("UPDATE tuneloop_studies SET status='running', pid=1, process=? WHERE id='s'",
                             (process_identity(1),))
    first.connection.commit()
    racer.join(timeout=30)
    assert len(outcome) == 1 and "is running in process 1" in outcome[0]
    first.close()


def test_a_failed_transaction_writes_nothing(tmp_path, store):
    with Workspace.open(tmp_path, create=True, store=store) as ws:
        with pytest.raises(RuntimeError), ws.transaction():
            ws.create_study("s", "guided", "accuracy", {})
            with ws.transaction():  # a nested one is part of the outer one
                ws.connection.execute("UPDATE tuneloop_studies SET status='interrupted' WHERE id='s'")
            raise RuntimeError("killed between two writes")
        assert ws.connection.execute("SELECT COUNT(*) FROM tuneloop_studies").fetchone()[0] == 0


def test_a_study_on_another_host_is_taken_over_only_once_its_lease_runs_out(tmp_path, store):
    """A lease, not a PID, tells whether another machine's driver lives: refused while it is renewed, taken over
    (its running trials interrupted) once it has run out."""
    from tuneloop.errors import TuneloopError

    with Workspace.open(tmp_path, create=True, store=store) as ws:
        ws.create_study("s", "guided", "accuracy", {})
        ws.start_trial("s", 0, 0, {}, "first")
        ws.connection.execute("UPDATE tuneloop_studies SET host='machine-b', pid=1, lease_until=? WHERE id='s'",
                              (time.time() + 60,))
    with Workspace.open(tmp_path) as ws:
        assert ws.studies()[0]["status"] == "running", "machine-b's driver renews its lease"
        with pytest.raises(TuneloopError, match="on machine-b .its lease has"):
            ws.claim_study("s")
        ws.connection.execute("UPDATE tuneloop_studies SET lease_until=? WHERE id='s'", (time.time() - 1,))
    with Workspace.open(tmp_path) as ws:
        assert ws.studies()[0]["status"] == "interrupted"
        assert [t["status"] for t in ws.trials("s")] == ["interrupted"]
        row = ws.claim_study("s")
        assert row["host"] == "machine-b" and ws.holds_study("s")
        assert ws.studies()[0]["lease_until"] > time.time() + 30


def test_the_heartbeat_renews_the_lease_and_notices_a_takeover(tmp_path, monkeypatch):
    from tuneloop.store import workspace as module

    monkeypatch.setattr(module, "LEASE_SECONDS", 0.4)
    with Workspace.open(tmp_path, create=True) as ws:
        ws.create_study("s", "guided", "accuracy", {})
        first = ws.studies()[0]["lease_until"]
        with module.StudyLease(tmp_path, "s") as lease:
            time.sleep(0.5)
            renewed = ws.studies()[0]["lease_until"]
            assert renewed > first and renewed > time.time(), "renewed every tenth of a second"
            ws.connection.execute("UPDATE tuneloop_studies SET host='machine-b' WHERE id='s'")  # taken over
            time.sleep(0.3)
            assert lease.lost and not ws.holds_study("s")


def test_a_postgres_store_is_recorded_by_its_folder_and_upgraded_in_place(tmp_path, postgres_url):
    from tuneloop.errors import ConfigError
    from tuneloop.store.workspace import SCHEMA_VERSION, STORE_FILE

    with Workspace.open(tmp_path / "ws", create=True, store=postgres_url) as ws:
        ws.create_study("s", "guided", "accuracy", {})
        ws.connection.execute("ALTER TABLE tuneloop_studies DROP COLUMN lease_until")
        ws.connection.set_schema_version(6)
    assert (tmp_path / "ws" / STORE_FILE).read_text().strip() == postgres_url
    assert (tmp_path / "ws" / STORE_FILE).stat().st_mode & 0o077 == 0, "its URL may hold a password"
    assert not (tmp_path / "ws" / "tuneloop.db").exists()
    with Workspace.open(tmp_path / "ws") as ws:  # no store given: the folder says where its tables are
        assert ws.connection.schema_version() == SCHEMA_VERSION
        assert "lease_until" in ws.connection.columns("tuneloop_studies")
        assert [s["id"] for s in ws.studies()] == ["s"]
    with Workspace.open(tmp_path / "sqlite", create=True):
        pass
    with pytest.raises(ConfigError, match="own SQLite database"):
        Workspace.open(tmp_path / "sqlite", store=postgres_url)
    with pytest.raises(ConfigError, match="must be a PostgreSQL URL"):
        Workspace.open(tmp_path / "other", create=True, store="mysql://x")
    assert not (tmp_path / "other").exists()
