"""The model registry: named models with immutable, numbered versions, each made from a completed run.

A version's number, row and folder (``registry/<name>/v<version>``) are made in one write transaction, so
two processes registering the same name at once get different numbers, and a row never points at a
folder that is not whole. A folder left by a process killed before its row was committed is an orphan that
the next registration of that number removes (it holds the write lock, and no row points at the folder).

Each version is a candidate, the production version, or archived; a name has at most one production
version (a unique index enforces it too). Promotion and rollback change stages only, never files, in one
short transaction that archives the old production version before setting the new one, so that readers
see either the old state or the new one, and a process killed midway leaves the old one. Every change is
recorded as an event: who (host, pid), when, which version was production before, why, and whether forced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import ConfigError, RunNotFoundError, TuneloopError
from tuneloop.store.atomic import write_dir_atomic
from tuneloop.store.workspace import Workspace

STAGES = ("candidate", "production", "archived")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"  # names become folder names: checked before use
_NAME_RULE = f"a model name must match {NAME_PATTERN} (a letter or digit, then up to 63 letters, digits, '_', '.', '-')"


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    created_at: str
    run_id: str
    parent: int | None  # the version it was adapted from; None for a version registered from a run
    stage: str
    lineage: dict[str, Any]  # data fingerprints, recipe, study, update settings ... (opaque here)
    metrics: dict[str, Any]
    gate: dict[str, Any] | None  # the promotion gate's last decision (opaque here)
    reason: str | None  # why it was promoted by force, if it was
    folder: Path  # absolute: <workspace root>/registry/<name>/v<version>

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def parse_reference(reference: str) -> tuple[str, int | None]:
    """'name', 'name:3' or 'name:v3' -> (name, version or None), reporting a bad name and version at once."""
    name, colon, version_text = reference.partition(":")
    problems = [] if re.fullmatch(NAME_PATTERN, name) else [f"{_NAME_RULE}; got {name!r} in {reference!r}."]
    version = None
    if colon:
        match = re.fullmatch(r"[vV]?([0-9]+)", version_text)
        version = int(match.group(1)) if match else 0
        if version < 1:
            problems.append(f"a model version must be a positive integer, as in 'name:3' or 'name:v3'; "
                            f"got {version_text!r} in {reference!r}.")
    if problems:
        raise ConfigError(problems)
    return name, version


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise ConfigError([f"{_NAME_RULE}; got {name!r}."])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Registry:
    def __init__(self, workspace: Workspace):
        self._root = workspace.root
        self._db = workspace.connection
        self._transaction = workspace.transaction  # one write transaction: what is read inside cannot change

    # -- writing ----------------------------------------------------------------------------------------

    def register(self, name: str, *, run_id: str, lineage: dict[str, Any], metrics: dict[str, Any],
                 parent: int | None = None, fill: Callable[[Path], None] | None = None) -> ModelVersion:
        """A new candidate version numbered one past the highest; ``fill`` writes its folder's files."""
        _check_name(name)
        made: Path | None = None
        try:
            with self._transaction():
                run = self._db.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()
                if run is None or run["status"] != "completed":
                    found = "no such run" if run is None else f"its status is '{run['status']}'"
                    raise TuneloopError(f"run '{run_id}' cannot be registered as '{name}': only a completed run "
                                        f"has a model, and {found}. 'tuneloop runs' lists the runs.")
                numbers = [row[0] for row in self._db.execute(
                    "SELECT version FROM registry_versions WHERE name=?", (name,))]
                if parent is not None and parent not in numbers:
                    raise TuneloopError(f"parent={parent!r} is not a version of '{name}'; versions: "
                                        f"{_listing(numbers)}.")
                version = max(numbers, default=0) + 1
                folder = self._root / "registry" / name / f"v{version}"
                # Left by a process killed before it committed: we hold the write lock and no row points here.
                shutil.rmtree(folder, ignore_errors=True)
                for partial in folder.parent.glob(f".{folder.name}.*.partial"):
                    shutil.rmtree(partial, ignore_errors=True)
                write_dir_atomic(folder, fill or (lambda _: None))
                made = folder
                self._db.execute(
                    "INSERT INTO registry_versions (name, version, created_at, run_id, parent, stage, lineage, "
                    "metrics, folder) VALUES (?, ?, ?, ?, ?, 'candidate', ?, ?, ?)",
                    (name, version, _now(), run_id, parent, json.dumps(lineage), json.dumps(metrics),
                     str(folder.relative_to(self._root))))
                self._record_event(name, version, "register")
        except BaseException:
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
            raise
        return self.get(name, version)

    def promote(self, name: str, version: int, *, reason: str | None = None, forced: bool = False,
                gate: dict[str, Any] | None = None, replacing: int | None = None) -> ModelVersion:
        """Make ``version`` production, archiving the current one; an archived version may come back this way.

        ``replacing``: the production version the gate judged ``version`` against. Where another process has
        promoted a different one since, nothing changes and the promotion is refused: the decision was not
        taken against the version it would replace."""
        _check_name(name)
        with self._transaction():
            self._row(name, version)
            current = self._production_number(name)
            if replacing is not None and current not in (replacing, version):
                raise TuneloopError(f"'{name}:{current}' became production while '{name}:{version}' was judged "
                                    f"against '{name}:{replacing}'; nothing changed. Promote it again to judge it "
                                    "against the new production version.")
            if current != version:
                self._change_stage(name, version, current, "promote", reason=reason, forced=forced, gate=gate)
        return self.get(name, version)

    def rollback(self, name: str, version: int | None = None, *, reason: str | None = None,
                 force: bool = False) -> ModelVersion:
        """Make an earlier version production again (a stage change: nothing is copied). ``version`` None is
        the version that was production when the current one was last promoted. Only a version that was
        production before can come back this way: any other has not passed the gate, and goes there through
        promote, or here with ``force`` and a recorded reason."""
        _check_name(name)
        with self._transaction():
            current = self._production_number(name)
            if current is None:
                raise TuneloopError(f"'{name}' has no production version to roll back from; versions: "
                                    f"{_listing(self._numbers(name))}. Use promote to choose one.")
            if version is None:
                # The promote event, not a later rollback to it: rolling back twice goes two steps back.
                event = self._db.execute(
                    "SELECT previous FROM registry_events WHERE name=? AND version=? AND action='promote' "
                    "ORDER BY id DESC LIMIT 1", (name, current)).fetchone()
                if event is None or event["previous"] is None:
                    raise TuneloopError(f"'{name}:{current}' is production and no version was production before "
                                        "it was promoted, so there is nothing to roll back to. Use promote.")
                version = event["previous"]
            else:
                self._row(name, version)
                if version >= current:
                    raise TuneloopError(f"rollback needs a version lower than the production one ({current}); "
                                        f"got version={version}. Use promote to move to {name}:{version}.")
            was_production = self._db.execute(
                "SELECT 1 FROM registry_events WHERE name=? AND version=? AND action IN ('promote', 'rollback') "
                "LIMIT 1", (name, version)).fetchone() is not None
            if not was_production and not force:
                raise TuneloopError(f"'{name}:{version}' was never production: rollback returns only to versions "
                                    f"that were, and this one has not passed the gate. Use promote {name}:{version} "
                                    "(through the gate), or rollback --force --reason TEXT.")
            if not was_production and not reason:
                raise ConfigError(["--force needs --reason TEXT: the reason is recorded with the version."])
            self._change_stage(name, version, current, "rollback", reason=reason, forced=not was_production)
        return self.get(name, version)

    def archive(self, name: str, version: int, *, reason: str | None = None) -> ModelVersion:
        """Retire a candidate. The production version is refused: another must take its place first."""
        _check_name(name)
        with self._transaction():
            stage = self._row(name, version)["stage"]
            if stage == "production":
                raise TuneloopError(f"'{name}:{version}' is the production version and cannot be archived; "
                                    "promote another version, or roll back to an earlier one, first.")
            if stage == "candidate":
                self._db.execute("UPDATE registry_versions SET stage='archived' WHERE name=? AND version=?",
                                 (name, version))
                self._record_event(name, version, "archive", reason=reason)
        return self.get(name, version)

    def record_gate(self, name: str, version: int, gate: dict[str, Any]) -> None:
        """Store the promotion gate's decision on a version (the model itself stays as it was registered)."""
        _check_name(name)
        self._row(name, version)
        self._db.execute("UPDATE registry_versions SET gate=? WHERE name=? AND version=?",
                         (json.dumps(gate), name, version))

    # -- reading ----------------------------------------------------------------------------------------

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """``version`` None means the production version."""
        _check_name(name)
        if version is None:
            version = self._production_number(name)
            if version is None:
                numbers = self._numbers(name, required=True)
                raise TuneloopError(f"'{name}' has no production version; versions: {_listing(numbers)}. "
                                    f"Name one ('{name}:{numbers[-1]}'), or promote one to production.")
        return self._version(self._row(name, version))

    def production(self, name: str) -> ModelVersion | None:
        _check_name(name)
        row = self._db.execute("SELECT * FROM registry_versions WHERE name=? AND stage='production'",
                               (name,)).fetchone()
        return self._version(row) if row else None

    def versions(self, name: str) -> list[ModelVersion]:
        _check_name(name)
        rows = self._db.execute("SELECT * FROM registry_versions WHERE name=? ORDER BY version", (name,))
        return [self._version(row) for row in rows.fetchall()]

    def names(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT DISTINCT name FROM registry_versions ORDER BY name")]

    def events(self, name: str) -> list[dict[str, Any]]:
        _check_name(name)
        rows = self._db.execute("SELECT * FROM registry_events WHERE name=? ORDER BY id", (name,)).fetchall()
        return [{**dict(row), "forced": bool(row["forced"])} for row in rows]

    # -- inside ---------------------------------------------------------------------------------------

    def _change_stage(self, name: str, version: int, current: int | None, action: str, *,
                      reason: str | None = None, forced: bool = False, gate: dict[str, Any] | None = None) -> None:
        """Inside the caller's transaction. The old production version is archived first, so the unique
        production index holds after each statement."""
        if current is not None:
            self._db.execute("UPDATE registry_versions SET stage='archived' WHERE name=? AND version=?",
                             (name, current))
        stored_reason = reason if action == "promote" else None  # the row keeps why it was promoted
        self._db.execute(
            "UPDATE registry_versions SET stage='production', gate=COALESCE(?, gate), reason=COALESCE(?, reason) "
            "WHERE name=? AND version=?",
            (json.dumps(gate) if gate is not None else None, stored_reason, name, version))
        self._record_event(name, version, action, previous=current, reason=reason, forced=forced)

    def _record_event(self, name: str, version: int, action: str, *, previous: int | None = None,
                      reason: str | None = None, forced: bool = False) -> None:
        self._db.execute(
            "INSERT INTO registry_events (name, version, action, previous, at, reason, forced, host, pid) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name, version, action, previous, _now(), reason, int(forced), socket.gethostname(), os.getpid()))

    def _production_number(self, name: str) -> int | None:
        row = self._db.execute("SELECT version FROM registry_versions WHERE name=? AND stage='production'",
                               (name,)).fetchone()
        return row[0] if row else None

    def _numbers(self, name: str, required: bool = False) -> list[int]:
        numbers = [row[0] for row in self._db.execute(
            "SELECT version FROM registry_versions WHERE name=? ORDER BY version", (name,))]
        if required and not numbers:
            raise RunNotFoundError(f"{self._root}: no model named '{name}'. Models here: "
                                   f"{', '.join(self.names()) or 'none'}.")
        return numbers

    def _row(self, name: str, version: int) -> sqlite3.Row:
        row = self._db.execute("SELECT * FROM registry_versions WHERE name=? AND version=?",
                               (name, version)).fetchone()
        if row is None:
            numbers = self._numbers(name, required=True)
            raise RunNotFoundError(f"'{name}' has no version {version!r}; versions: {_listing(numbers)}.")
        return row

    def _version(self, row: sqlite3.Row) -> ModelVersion:
        return ModelVersion(
            name=row["name"], version=row["version"], created_at=row["created_at"], run_id=row["run_id"],
            parent=row["parent"], stage=row["stage"], lineage=json.loads(row["lineage"]),
            metrics=json.loads(row["metrics"]), gate=json.loads(row["gate"]) if row["gate"] else None,
            reason=row["reason"], folder=self._root / row["folder"])


def _listing(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in numbers) or "none"
