import subprocess
import sys

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


def test_a_run_is_completed_only_with_its_folder(tmp_path):
    with Workspace.open(tmp_path, create=True) as ws:
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


def test_run_of_a_killed_process_is_marked_interrupted(tmp_path):
    script = (
        "import os, sys; from tuneloop.store.workspace import Workspace\n"
        f"ws = Workspace.open({str(tmp_path)!r}, create=True)\n"
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
