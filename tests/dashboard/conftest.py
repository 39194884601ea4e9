"""A workspace with something on every dashboard page, and the dashboard served over a workspace.

Data: scikit-learn's digits (BSD-licensed with scikit-learn; from the UCI repository), as a table of 64 pixel
columns: a study and a production model on digits 0-4, a drift check on digits 5-9, and two updates left as
candidates: one on digits 5-9 (the gate passes it) and one on the same rows with shuffled labels (the gate
refuses it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.data.demo import digit_update_files

pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="session")
def digit_files(tmp_path_factory) -> dict[str, Path]:
    return digit_update_files(tmp_path_factory.mktemp("dashboard-digits"), old_rows=700)


@pytest.fixture(scope="session")
def filled_workspace(digit_files, tmp_path_factory) -> Path:
    """Study 'digits-study'; model 'digits': v1 production, v2 the poisoned update, v3 the good one; one drift
    check. About 10 s."""
    from tuneloop.continual import versions
    from tuneloop.continual.drift import drift
    from tuneloop.continual.update import adapt

    workspace = tmp_path_factory.mktemp("dashboard") / "ws"
    api.tune(digit_files["old"], workspace=workspace, name="digits-study", budget="4trials", recipe=Recipe(epochs=4),
             prune="none")
    run = api.fit(digit_files["old"], workspace=workspace, recipe=Recipe(epochs=10, learning_rate=1e-3))
    versions.register("digits", run.id, workspace=workspace)
    versions.promote("digits:1", workspace=workspace)
    drift("digits", digit_files["new"], workspace=workspace)
    poisoned = adapt("digits", digit_files["poisoned"], workspace=workspace, promote=False, budget="1trials")
    good = adapt("digits", digit_files["new"], workspace=workspace, promote=False, budget="1trials")
    assert (poisoned.version.version, good.version.version) == (2, 3)
    assert not poisoned.decision.promote and good.decision.promote, "the gate refuses v2 and passes v3"
    return workspace


@pytest.fixture()
def workspace_copy(filled_workspace, tmp_path) -> Path:
    """A copy of the filled workspace that a test may change (promote, roll back)."""
    return Path(shutil.copytree(filled_workspace, tmp_path / "ws"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def serve() -> Iterator[Callable[[Path], str]]:
    """Start ``tuneloop dashboard`` over a workspace, as a user would; returns its address. Stopped after."""
    servers: list[subprocess.Popen] = []

    def start(workspace: Path) -> str:
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "tuneloop", "dashboard", "--workspace", str(workspace),
                                   "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        servers.append(server)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read().decode()
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return f"http://127.0.0.1:{port}"
            time.sleep(0.1)
        pytest.fail("the dashboard did not start listening within 60 s")

    yield start
    for server in servers:
        server.terminate()
        server.wait(timeout=10)
