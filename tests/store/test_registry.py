import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tuneloop.errors import ConfigError, RunNotFoundError, TuneloopError
from tuneloop.store.registry import Registry, parse_reference
from tuneloop.store.workspace import Workspace

RUN = dict(task="t", adapter="tabular_mlp", backbone="b", train_source="a", val_source="a", train_fingerprint="f",
           val_fingerprint="g", n_train=1, n_val=1, recipe={})


def completed_run(ws: Workspace) -> str:
    run_id = ws.start_run(**RUN)
    ws.artifact_dir(run_id).mkdir(parents=True)
    ws.complete_run(run_id, {"val_accuracy": 0.5}, 1, 1.0)
    return run_id


def register(registry: Registry, ws: Workspace, name: str = "m", count: int = 1) -> list[int]:
    return [registry.register(name, run_id=completed_run(ws), lineage={"data": "f"}, metrics={"acc": 0.5}).version
            for _ in range(count)]


@pytest.fixture
def ws(tmp_path, store):
    with Workspace.open(tmp_path, create=True, store=store) as workspace:
        yield workspace


@pytest.fixture
def registry(ws):
    return Registry(ws)


def run_script(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- register ---------------------------------------------------------------------------------------------


def test_register_numbers_versions_per_name(registry, ws):
    assert register(registry, ws, "a", 3) == [1, 2, 3]
    assert register(registry, ws, "b", 2) == [1, 2]
    assert registry.names() == ["a", "b"]
    assert [v.ref for v in registry.versions("a")] == ["a:1", "a:2", "a:3"]
    assert {v.stage for v in registry.versions("a")} == {"candidate"}
    assert [e["action"] for e in registry.events("b")] == ["register", "register"]


def test_register_puts_the_fill_files_in_the_version_folder(registry, ws):
    run_id = completed_run(ws)
    version = registry.register("m", run_id=run_id, lineage={"recipe": {"lr": 0.1}}, metrics={"acc": 0.9},
                                fill=lambda folder: (folder / "model.bin").write_text("weights"))
    assert version.folder == ws.root / "registry" / "m" / "v1"
    assert (version.folder / "model.bin").read_text() == "weights"
    again = registry.get("m", 1)
    assert (again.run_id, again.lineage, again.metrics, again.parent) == (run_id, {"recipe": {"lr": 0.1}},
                                                                          {"acc": 0.9}, None)


def test_a_failing_fill_leaves_no_folder_and_no_row(registry, ws):
    def fill(folder):
        (folder / "model.bin").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        registry.register("m", run_id=completed_run(ws), lineage={}, metrics={}, fill=fill)
    assert registry.versions("m") == [] and registry.events("m") == []
    assert list((ws.root / "registry" / "m").iterdir()) == []
    assert register(registry, ws) == [1]


def test_an_orphan_folder_from_a_killed_registration_is_replaced(registry, ws):
    orphan = ws.root / "registry" / "m" / "v1"
    orphan.mkdir(parents=True)
    (orphan / "stale.bin").write_text("old")
    version = registry.register("m", run_id=completed_run(ws), lineage={}, metrics={},
                                fill=lambda folder: (folder / "model.bin").write_text("new"))
    assert sorted(p.name for p in version.folder.iterdir()) == ["model.bin"]


@pytest.mark.parametrize("name", ["", "-m", "a/b", "../up", "a:b", "x" * 65, "é"])
def test_register_refuses_a_bad_name_before_writing(registry, ws, name):
    with pytest.raises(ConfigError, match="model name must match"):
        registry.register(name, run_id=completed_run(ws), lineage={}, metrics={})
    assert not (ws.root / "registry").exists()


def test_register_refuses_unknown_and_incomplete_runs(registry, ws):
    with pytest.raises(TuneloopError, match="'nope'.*no such run"):
        registry.register("m", run_id="nope", lineage={}, metrics={})
    running = ws.start_run(**RUN)
    with pytest.raises(TuneloopError, match="status is 'running'"):
        registry.register("m", run_id=running, lineage={}, metrics={})
    with pytest.raises(TuneloopError, match="parent=7 is not a version"):
        registry.register("m", run_id=completed_run(ws), lineage={}, metrics={}, parent=7)
    assert not (ws.root / "registry").exists() and registry.names() == []


# -- promote ----------------------------------------------------------------------------------------------


def test_promote_keeps_one_production_and_archives_the_previous(registry, ws):
    register(registry, ws, count=3)
    registry.promote("m", 1)
    promoted = registry.promote("m", 2, reason="gate failed on a noisy metric", forced=True, gate={"passed": False})
    assert registry.get("m") == promoted == registry.production("m")
    assert (promoted.stage, promoted.reason, promoted.gate) == ("production", "gate failed on a noisy metric",
                                                                {"passed": False})
    assert [v.stage for v in registry.versions("m")] == ["archived", "production", "candidate"]
    promotes = [e for e in registry.events("m") if e["action"] == "promote"]
    assert [(e["version"], e["previous"], e["forced"]) for e in promotes] == [(1, None, False), (2, 1, True)]


def test_promoting_the_production_version_is_a_no_op(registry, ws):
    register(registry, ws, count=2)
    registry.promote("m", 2)
    events = registry.events("m")
    assert registry.promote("m", 2).stage == "production"
    assert registry.events("m") == events


def test_get_explains_what_is_missing(registry, ws):
    with pytest.raises(RunNotFoundError, match="no model named 'm'. Models here: none"):
        registry.get("m")
    register(registry, ws, count=2)
    with pytest.raises(TuneloopError, match="no production version; versions: 1, 2.*promote"):
        registry.get("m")
    with pytest.raises(RunNotFoundError, match="no version 5; versions: 1, 2"):
        registry.get("m", 5)
    assert registry.production("m") is None


def test_record_gate_stores_the_decision(registry, ws):
    register(registry, ws)
    registry.record_gate("m", 1, {"passed": True, "checks": ["accuracy"]})
    assert registry.get("m", 1).gate == {"passed": True, "checks": ["accuracy"]}


# -- rollback ---------------------------------------------------------------------------------------------


def test_rollback_goes_to_the_previous_production_without_copying(registry, ws):
    register(registry, ws, count=3)
    for version in (1, 2, 3):
        registry.promote("m", version)
    folders = {v.version: sorted(v.folder.iterdir()) for v in registry.versions("m")}
    assert registry.rollback("m", reason="bad canary").ref == "m:2"
    assert registry.rollback("m").ref == "m:1"  # two steps back, not back to 3
    assert [v.stage for v in registry.versions("m")] == ["production", "archived", "archived"]
    assert {v.version: sorted(v.folder.iterdir()) for v in registry.versions("m")} == folders
    rollbacks = [(e["version"], e["previous"], e["reason"]) for e in registry.events("m") if e["action"] == "rollback"]
    assert rollbacks == [(2, 3, "bad canary"), (1, 2, None)]
    with pytest.raises(TuneloopError, match="nothing to roll back to"):
        registry.rollback("m")


def test_rollback_to_an_explicit_earlier_version_that_was_production(registry, ws):
    register(registry, ws, count=3)
    registry.promote("m", 1)
    registry.promote("m", 3)
    assert registry.rollback("m", 1).stage == "production"
    assert registry.get("m", 3).stage == "archived"


def test_rollback_to_a_version_that_never_was_production_needs_force_and_a_reason(registry, ws):
    """Such a version never passed the gate: rollback must not be a way around it."""
    register(registry, ws, count=3)
    registry.promote("m", 3)
    with pytest.raises(TuneloopError, match="'m:1' was never production.*promote m:1"):
        registry.rollback("m", 1)
    with pytest.raises(ConfigError, match="--reason"):
        registry.rollback("m", 1, force=True)
    assert registry.get("m").version == 3
    assert registry.rollback("m", 1, force=True, reason="the gate's holdout is stale").stage == "production"
    (event,) = [e for e in registry.events("m") if e["action"] == "rollback"]
    assert event["forced"] and event["reason"] == "the gate's holdout is stale"


def test_rollback_is_refused_without_an_earlier_version(registry, ws):
    register(registry, ws, count=2)
    with pytest.raises(TuneloopError, match="no production version to roll back from"):
        registry.rollback("m")
    registry.promote("m", 1)
    with pytest.raises(TuneloopError, match="nothing to roll back to"):
        registry.rollback("m")
    with pytest.raises(TuneloopError, match="lower than the production one \\(1\\); got version=2.*promote"):
        registry.rollback("m", 2)
    assert registry.get("m").version == 1


# -- archive ----------------------------------------------------------------------------------------------


def test_archive_retires_a_candidate_but_not_the_production_version(registry, ws):
    register(registry, ws, count=2)
    registry.promote("m", 2)
    assert registry.archive("m", 1, reason="superseded").stage == "archived"
    assert registry.archive("m", 1).stage == "archived"
    assert [e["action"] for e in registry.events("m")].count("archive") == 1
    with pytest.raises(TuneloopError, match="production version and cannot be archived.*promote"):
        registry.archive("m", 2)
    assert registry.get("m").version == 2


# -- references -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("reference", "expected"), [
    ("churn", ("churn", None)), ("churn:3", ("churn", 3)), ("churn:v12", ("churn", 12)), ("a.b-c_1", ("a.b-c_1", None)),
])
def test_parse_reference(reference, expected):
    assert parse_reference(reference) == expected


@pytest.mark.parametrize(("reference", "message"), [
    ("churn:0", "positive integer.*'0'"), ("churn:x", "positive integer.*'x'"), ("churn:", "positive integer"),
    ("churn:-1", "positive integer"), ("/etc:2", "model name must match.*'/etc'"), ("", "model name must match"),
])
def test_parse_reference_refuses_bad_values(reference, message):
    with pytest.raises(ConfigError, match=message):
        parse_reference(reference)


def test_parse_reference_reports_both_problems_at_once():
    with pytest.raises(ConfigError) as caught:
        parse_reference("../x:zero")
    assert len(caught.value.problems) == 2


# -- processes --------------------------------------------------------------------------------------------

PROMOTER = """
    import sys, time
    from pathlib import Path
    from tuneloop.store.registry import Registry
    from tuneloop.store.workspace import Workspace

    root, first, second = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    registry = Registry(Workspace.open(root))
    Path(root, f"ready-{first}").touch()
    while not Path(root, "go").exists():
        time.sleep(0.002)
    for step in range(30):
        registry.promote("m", first if step % 2 == 0 else second)
        time.sleep(0.002)  # leave the lock free now and then, so that the two processes interleave
"""


def test_concurrent_promotions_keep_one_production_and_a_consistent_history(registry, ws):
    register(registry, ws, count=4)
    processes = [run_script(PROMOTER, str(ws.root), "1", "2"), run_script(PROMOTER, str(ws.root), "3", "4")]
    deadline = time.monotonic() + 30
    while not all((ws.root / f"ready-{n}").exists() for n in (1, 3)) and time.monotonic() < deadline:
        time.sleep(0.01)
    (ws.root / "go").touch()
    for process in processes:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
    assert [v.stage for v in registry.versions("m")].count("production") == 1
    promotes = [e for e in registry.events("m") if e["action"] == "promote"]
    assert len(promotes) == 60  # each process alternates between its own versions: none is a no-op
    made_production = None
    for event in promotes:
        assert event["previous"] == made_production, event
        made_production = event["version"]
    assert registry.get("m").version == made_production
    pids = [e["pid"] for e in promotes]
    assert sum(pids[i] != pids[i + 1] for i in range(len(pids) - 1)) >= 2, "the two processes ran one after the other"


KILLED_PROMOTER = """
    import json, os, signal, sys
    from tuneloop.store.registry import Registry
    from tuneloop.store.workspace import Workspace

    def die_before_commit(self, *args, **kwargs):
        stages = self._db.execute("SELECT version, stage FROM registry_versions ORDER BY version").fetchall()
        print(json.dumps([list(row) for row in stages]), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    Registry._record_event = die_before_commit
    Registry(Workspace.open(sys.argv[1])).promote("m", 2)
"""


def test_a_process_killed_during_promotion_leaves_the_old_production(registry, ws):
    register(registry, ws, count=2)
    registry.promote("m", 1)
    events = registry.events("m")
    process = run_script(KILLED_PROMOTER, str(ws.root))
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr
    assert json.loads(stdout) == [[1, "archived"], [2, "production"]]  # both updates ran, uncommitted
    ws.close()
    with Workspace.open(ws.root) as reopened:
        registry = Registry(reopened)
        assert [v.stage for v in registry.versions("m")] == ["production", "candidate"]
        assert registry.events("m") == events
        assert registry.promote("m", 2).stage == "production"
        assert registry.get("m", 1).stage == "archived"


def test_a_promotion_judged_against_a_production_version_that_has_since_changed_is_refused(tmp_path):
    with Workspace.open(tmp_path, create=True) as ws:
        registry = Registry(ws)
        for _ in range(3):
            registry.register("m", run_id=completed_run(ws), lineage={}, metrics={})
        registry.promote("m", 1)
        registry.promote("m", 2)  # another process, while version 3 was being judged against version 1
        with pytest.raises(TuneloopError, match="became production"):
            registry.promote("m", 3, replacing=1)
        assert registry.get("m").version == 2 and registry.get("m", 3).stage == "candidate"
        assert registry.promote("m", 3, replacing=2).stage == "production"
