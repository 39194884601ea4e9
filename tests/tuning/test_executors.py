"""Trials trained at once, in worker processes or as Ray tasks, and studies shared by two machines through a
PostgreSQL store: real processes, a real Ray cluster and a real PostgreSQL server, and real SIGKILLs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from conftest import run_tuneloop, sentiment_rows, write_csv
from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.store.workspace import Workspace
from tuneloop.tasks.text import TEXT_FAMILY
from tuneloop.tuning.diagnose import Diagnosis
from tuneloop.tuning.strategies import GuidedStrategy, TrialOutcome, trials_since_gain

SEARCH = ["--budget", "4trials", "--strategy", "random", "--prune", "none", "--no-seed-check", "--no-refit"]


def sqlite_rows(workspace: Path) -> Callable[[str], list[tuple]]:
    def query(sql: str) -> list[tuple]:
        db = workspace / "tuneloop.db"
        if not db.exists():
            return []
        try:
            with sqlite3.connect(db, timeout=5) as connection:
                return connection.execute(sql).fetchall()
        except sqlite3.OperationalError:  # the tables are not made yet
            return []
    return query


def postgres_rows(url: str) -> Callable[[str], list[tuple]]:
    import psycopg

    def query(sql: str) -> list[tuple]:
        try:
            with psycopg.connect(url, autocommit=True) as connection:
                return connection.execute(sql).fetchall()
        except psycopg.errors.UndefinedTable:
            return []
    return query


def kill_mid_run(process: subprocess.Popen, query: Callable[[str], list[tuple]], *, worker: bool,
                 timeout: float = 300) -> str:
    """SIGKILL the process that trains a run which has recorded an epoch and is still running: a worker (not
    ``process``, the study's driver) or the driver itself. It is frozen first and checked again (epochs are fast),
    so the kill lands mid-run. Returns the killed run's id."""
    sql = ("SELECT r.id, r.pid FROM runs r WHERE r.status = 'running' AND EXISTS "
           "(SELECT 1 FROM epochs e WHERE e.run_id = r.id)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        rows = [(run, pid) for run, pid in query(sql) if (pid != process.pid) == worker]
        if rows:
            run, pid = rows[0]
            os.kill(pid, signal.SIGSTOP)
            if (run, pid) in query(sql):
                os.kill(pid, signal.SIGKILL)
                if not worker:
                    process.wait()
                return run
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.02)
    pytest.fail("no run was ever mid-run")


def assert_every_trial_once(workspace: Path, study: str, killed: str, trials: int = 4) -> None:
    with Workspace.open(workspace) as store:
        rows = store.trials(study)
        runs = {r.id: r for r in store.runs()}
        row = store.studies()[0]
    search = [t for t in rows if t["status"] != "interrupted"]
    assert len(search) == trials and all(t["status"] == "completed" for t in search), (
        [(t["number"], t["status"]) for t in rows], row["stop_reason"])
    recipes = [json.dumps(t["recipe"], sort_keys=True) for t in search]
    assert len(set(recipes)) == trials, "no recipe trained twice to its end"
    assert runs[killed].status == "interrupted"
    continued = [r for r in runs.values() if r.metrics.get("resumes_run") == killed]
    assert len(continued) == 1 and continued[0].status == "completed", "the lost attempt was continued, once"
    assert continued[0].id in {t["run_id"] for t in search}
    assert not any(r.status == "running" for r in runs.values())
    assert row["status"] == "finished"


def text_data(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(150))


def test_two_local_workers_finish_a_study_when_one_is_killed_mid_trial(tiny_model, tmp_path):
    workspace = tmp_path / "ws"
    command = [sys.executable, "-m", "tuneloop", "tune", str(text_data(tmp_path)), "--model", str(tiny_model),
               "--workspace", str(workspace), "--name", "s", "--workers", "2", "--json", *SEARCH]
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    killed = kill_mid_run(process, sqlite_rows(workspace), worker=True)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err.decode()[-3000:]
    result = json.loads(out)
    assert_every_trial_once(workspace, "s", killed)
    pids = _pids(workspace)
    assert process.pid not in pids and len(pids) >= 3, "trials trained in workers: two, and the killed one's successor"
    best = api.load_run(result["best_run"], workspace)
    assert len(best.predict(["good great fine", "awful grim"]).labels) == 2


def _pids(workspace: Path) -> set[int]:
    return {pid for (pid,) in sqlite_rows(workspace)("SELECT pid FROM runs")}


def test_a_ray_cluster_runs_a_study_with_two_workers_and_retries_a_killed_one(tiny_model, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'tuneloop[ray]'")
    workspace = tmp_path / "ws"
    command = [sys.executable, "-m", "tuneloop", "tune", str(text_data(tmp_path)), "--model", str(tiny_model),
               "--workspace", str(workspace), "--name", "s", "--executor", "ray", "--workers", "2", "--json",
               *SEARCH]
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    killed = kill_mid_run(process, sqlite_rows(workspace), worker=True)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err.decode()[-3000:]
    assert_every_trial_once(workspace, "s", killed)
    assert process.pid not in _pids(workspace), "every trial trained in a Ray worker"
    best = api.load_run(json.loads(out)["best_run"], workspace)
    assert len(best.predict(["good great fine"]).labels) == 1


def test_two_machines_share_one_postgres_study_and_one_artifact_path(tiny_model, tmp_path, postgres_url):
    """Machine A drives the study and dies mid-trial; machine B, with its own working folder, is refused while
    A's lease runs, then takes the study over and finishes it in the shared folder, continuing A's trial."""
    shared = tmp_path / "shared"
    data = text_data(tmp_path)
    machines = {name: tmp_path / name for name in ("a", "b")}
    for folder in machines.values():
        folder.mkdir()

    def env(name: str) -> dict[str, str]:
        return {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELOOP_HOST": f"machine-{name}",
                "TUNELOOP_LEASE_SECONDS": "30"}

    command = [sys.executable, "-m", "tuneloop", "tune", str(data), "--model", str(tiny_model), "--workspace",
               str(shared), "--store", postgres_url, "--name", "s", "--quiet", *SEARCH]
    first = subprocess.Popen(command, cwd=machines["a"], env=env("a"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    query = postgres_rows(postgres_url)

    def second_trial_running() -> bool:
        return bool(query("SELECT 1 FROM tuneloop_trials WHERE number = 1 AND status = 'running'"))

    while not second_trial_running():
        assert first.poll() is None, first.stderr.read().decode()
        time.sleep(0.05)
    killed = kill_mid_run(first, query, worker=False)
    resume = [sys.executable, "-m", "tuneloop", "tune", "--resume", "s", "--workspace", str(shared), "--json"]
    refused = subprocess.run(resume, cwd=machines["b"], env=env("b"), capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "machine-a" in refused.stderr and "lease" in refused.stderr
    query("UPDATE tuneloop_studies SET lease_until = lease_until - 60 RETURNING id")  # A's lease runs out
    resumed = subprocess.run(resume, cwd=machines["b"], env=env("b"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (shared / "tuneloop.db").exists(), "the tables are in PostgreSQL"
    assert_every_trial_once(shared, "s", killed)
    hosts = {host for (host,) in query("SELECT DISTINCT host FROM runs")}
    assert hosts == {"machine-a", "machine-b"}
    best = api.load_run(json.loads(resumed.stdout)["best_run"], shared)
    assert best.path.parent == shared / "artifacts"
    assert len(best.predict(["good great fine"]).labels) == 1
    assert not list(machines["a"].iterdir()) and not list(machines["b"].iterdir()), "nothing in the working folders"
    report = run_tuneloop("report", "s", "--workspace", shared, "-o", tmp_path / "s.html")
    assert report.returncode == 0, report.stderr
    assert "Optuna's importances are unavailable" not in (tmp_path / "s.html").read_text(), "read from PostgreSQL"


def test_the_guided_strategy_proposes_another_move_while_one_is_in_flight():
    facts_free = GuidedStrategy(6, TEXT_FAMILY)
    head = Recipe(trainable_layers=0, learning_rate=2e-3)
    underfit = Diagnosis("underfitting", {"ci_half_width": 0.01}, "underfitting", "underfitting")
    done = TrialOutcome(head, "completed", 0.6, underfit, 0)
    study = optuna.create_study(direction="maximize")
    first = facts_free.propose(study, Recipe(), [done], None)
    in_flight = TrialOutcome(first.recipe, "running", None, None, 1, 0)
    second = facts_free.propose(study, Recipe(), [done, in_flight], None)
    assert second is not None and second.recipe != first.recipe and second.recipe != head
    assert second.parent == 0, "both moves start from the best finished trial"
    only_running = facts_free.propose(study, Recipe(), [TrialOutcome(head, "running", None, None, 0)], None)
    assert only_running is None, "nothing to read a diagnosis from yet: wait for the first trial"


def test_a_trial_still_training_counts_neither_way_toward_a_plateau():
    good = Diagnosis("good_fit", {"ci_half_width": 0.01}, "", "")
    history = [TrialOutcome(Recipe(), "completed", 0.8, good, 0),
               TrialOutcome(Recipe(seed=1), "completed", 0.7, good, 1)]
    running = [TrialOutcome(Recipe(seed=s), "running", None, None, s) for s in range(2, 6)]
    assert trials_since_gain(history + running) == trials_since_gain(history) == 1


def test_executor_options_are_checked_before_anything_is_written(tmp_path):
    data = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(10))
    result = run_tuneloop("tune", data, "--workspace", tmp_path / "ws", "--workers", "0", "--ray-address",
                          "127.0.0.1:6379")
    assert result.returncode == 2
    assert "'workers' parameter must be an int >= 1. Got 0" in result.stderr
    assert "applies to the Ray executor only" in result.stderr
    assert not (tmp_path / "ws").exists()
