"""A fit killed mid-run continues from its last finished epoch with `fit --resume RUN`, and ends where an
uninterrupted fit ends."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

from tests.conftest import kill_when, sentiment_rows, write_csv

from tuneloop.cli import main

TIMING = ("seconds", "train_samples_per_s", "run_id")


def fit_command(data, tiny_model, workspace) -> list[str]:
    return [sys.executable, "-m", "tuneloop", "fit", str(data), "--model", str(tiny_model), "--workspace",
            str(workspace), "--epochs", "8", "--lr", "2e-3", "--batch-size", "8", "--dropout", "0.2", "--patience",
            "0", "--json"]


def running_run_with_epochs(db, at_least: int) -> str | None:
    """The id of the running run once it has recorded ``at_least`` epochs."""
    if not db.exists():
        return None
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            row = connection.execute(
                "SELECT r.id FROM runs r JOIN epochs e ON e.run_id = r.id WHERE r.status='running' "
                "GROUP BY r.id HAVING COUNT(*) >= ?", (at_least,)).fetchone()
    except sqlite3.OperationalError:
        return None
    return row[0] if row else None


def curve(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in epoch.items() if k not in TIMING} for epoch in history]


def test_a_killed_fit_resumes_and_ends_as_an_uninterrupted_one(tiny_model, tmp_path, capsys):
    data = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(300))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    straight = subprocess.run(fit_command(data, tiny_model, tmp_path / "straight"), env=env, capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr
    straight = json.loads(straight.stdout)
    assert not (tmp_path / "straight" / "checkpoints" / "fit" / straight["run"]).exists(), "removed when done"

    workspace = tmp_path / "ws"
    process = subprocess.Popen(fit_command(data, tiny_model, workspace), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    db = workspace / "tuneloop.db"
    kill_when(process, lambda: bool(running_run_with_epochs(db, 3)) and not running_run_with_epochs(db, 8),
              "its third epoch")
    killed = running_run_with_epochs(db, 3)

    assert main(["fit", "--resume", killed[:12], "--workspace", str(workspace), "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["run"] != killed and resumed["metrics"]["resumes_run"] == killed
    assert resumed["metrics"]["resumed_from_epoch"] >= 2
    assert curve(resumed["history"]) == curve(straight["history"]), "every epoch as if it had never been killed"
    assert resumed["metrics"]["val_loss"] == straight["metrics"]["val_loss"]
    assert not (workspace / "checkpoints" / "fit" / killed).exists()
    assert main(["fit", "--resume", resumed["run"], "--workspace", str(workspace)]) != 0, "a completed run is refused"
    assert "nothing to resume" in capsys.readouterr().err
