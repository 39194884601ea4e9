"""The registry as a user works it: register a run's model under a name, promote a version through the gate,
roll back, archive, list and show. Each version's folder keeps a bounded sample of the data it was trained
on (``replay``) and validated on (``holdout``); an update's version also keeps the two holdouts its gate
judged it on (``gate_new``, ``gate_old``), so the same decision can be taken again later.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.continual.gate import DEFAULT_TOLERANCE, GateDecision, decide
from tuneloop.continual.samples import (
    HOLDOUT_SIZE,
    REPLAY_SIZE,
    Examples,
    bounded_sample,
    class_labels,
    load_examples,
    save_examples,
)
from tuneloop.continual.scoring import example_scores, is_regressor
from tuneloop.errors import ConfigError, DataError, RunNotFoundError, TuneloopError
from tuneloop.pipeline import task_of_run
from tuneloop.run import Run
from tuneloop.store.registry import ModelVersion, Registry, parse_reference
from tuneloop.store.workspace import RunRecord, Workspace

GATE_NEW, GATE_OLD = "gate_new", "gate_old"


class GateRefused(TuneloopError):
    """The candidate did not pass the promotion gate; production is unchanged."""

    exit_code = 3
    def __init__(self, version: ModelVersion, decision: GateDecision):
        failed = "; ".join(check.summary for check in decision.failed)
        super().__init__(f"{version.ref} stays a candidate: {failed}. Production is unchanged. Promote it anyway "
                         "with --force --reason TEXT.")
        self.version, self.decision = version, decision


@dataclass(frozen=True)
class Promotion:
    version: ModelVersion
    decision: GateDecision | None  # None where there was no production version to compare with


def version_run(store: Workspace, version: ModelVersion) -> Run:
    """The model of a registered version."""
    record = store.resolve(version.run_id)
    if record.artifact is None or not record.artifact.is_dir():
        raise RunNotFoundError(f"{version.ref}: the model folder of run {record.id} is missing.")
    return Run.from_dir(record.artifact, record.id)


def register(name: str, run: str, *, workspace: str | os.PathLike | None = None, data: Any = None,
             val: Any = None, replay_size: int = REPLAY_SIZE, holdout_size: int = HOLDOUT_SIZE) -> ModelVersion:
    """Register a completed run's model as a new candidate version of ``name``, keeping a stratified sample
    of the data it was trained and validated on. The data is read again from where the run read it (checked
    against the fingerprints it recorded), or from ``data`` and ``val`` where given."""
    parse_reference(name)
    with Workspace.open(workspace) as store:
        record = store.resolve(run)
        train, held = _run_examples(record, data, val)
        model = Run.from_dir(record.artifact, record.id)
        classification = not is_regressor(model)
        lineage = {"run": record.id, "kind": record.task, "backbone": record.backbone,
                   "train_source": record.train_source, "val_source": record.val_source,
                   "train_fingerprint": record.train_fingerprint, "val_fingerprint": record.val_fingerprint,
                   "recipe": record.recipe, "data_options": record.data_options or {},
                   "study": store.study_of(record.id)}

        def fill(folder: Path) -> None:
            save_examples(bounded_sample(train, replay_size, 0, classification), folder, "replay")
            save_examples(bounded_sample(held, holdout_size, 0, classification), folder, "holdout")

        return Registry(store).register(name, run_id=record.id, lineage=lineage, metrics=record.metrics, fill=fill)


def _run_examples(record: RunRecord, data: Any, val: Any) -> tuple[Examples, Examples]:
    """The run's training and validation examples, read as the run read them."""
    try:
        task = task_of_run(record, data, val)
    except DataError as error:
        raise DataError(f"{error} The registry keeps a sample of exactly that data.") from None
    return task.train, task.val


def promote(reference: str, *, workspace: str | os.PathLike | None = None, force: bool = False,
            reason: str | None = None, tolerance: float = DEFAULT_TOLERANCE) -> Promotion:
    """Make ``NAME:VERSION`` production, through the gate where there is a production version to beat:
    GateRefused (production unchanged) where it fails, unless ``force`` with a ``reason``."""
    name, number = parse_reference(reference)
    if number is None:
        raise ConfigError([f"promote needs a version: NAME:VERSION, e.g. {name}:2."])
    if force and not (reason and reason.strip()):
        raise ConfigError(["--force needs --reason TEXT: the reason is recorded with the version."])
    with Workspace.open(workspace) as store:
        registry = Registry(store)
        candidate = registry.get(name, number)
        production = registry.production(name)
        if production is None or production.version == candidate.version:
            return Promotion(registry.promote(name, number, reason=reason, forced=force), None)
        decision = judge(store, candidate, production, tolerance)
        registry.record_gate(name, number, decision.to_dict())
        if not decision.promote and not force:
            raise GateRefused(candidate, decision)
        promoted = registry.promote(name, number, reason=reason, forced=force and not decision.promote,
                                    gate=decision.to_dict(), replacing=production.version)
        return Promotion(promoted, decision)


def judge(store: Workspace, candidate: ModelVersion, production: ModelVersion,
          tolerance: float = DEFAULT_TOLERANCE) -> GateDecision:
    """The gate's decision between two versions: on the candidate's new-data holdout and the old holdout it
    kept for its gate (an update), or else on the candidate's own holdout and production's."""
    gate_new = candidate.folder / f"{GATE_NEW}.json"
    new = load_examples(candidate.folder, GATE_NEW if gate_new.exists() else "holdout")
    old = load_examples(candidate.folder, GATE_OLD) if gate_new.exists() else load_examples(production.folder,
                                                                                            "holdout")
    decision = gate_decision(version_run(store, candidate), version_run(store, production), new, old, tolerance)
    return replace(decision, caveat="" if gate_new.exists() else holdout_caveat(candidate))


def holdout_trained_on(version: ModelVersion) -> bool:
    """Whether the version's holdout is a sample of examples its final fit trained on (a refit or ensemble on
    every labelled example), not of validation data it was only chosen on."""
    return str((version.lineage or {}).get("val_source", "")).endswith("(trained on too)")


def holdout_caveat(candidate: ModelVersion) -> str:
    """How the gate's numbers lean where the candidate's new holdout is a sample of its own validation data (a
    run registered as it is, not an update made by adapt, which keeps examples no trial saw for its gate)."""
    if holdout_trained_on(candidate):
        return (f"optimistic: {candidate.ref}'s new holdout is a sample of examples it was trained on (its final "
                "fit used every labelled example), so its new-data gain is overstated; judge it on data it never "
                "saw (adapt keeps such a holdout) where the decision matters")
    return (f"optimistic: {candidate.ref}'s new holdout is a sample of the validation data that chose its best "
            "epoch and recipe, so its new-data gain leans in its favour; adapt keeps a holdout no trial saw")


def gate_decision(candidate: Run, production: Run, new: Examples, old: Examples,
                  tolerance: float = DEFAULT_TOLERANCE) -> GateDecision:
    regression = is_regressor(production)
    words = {"error": production.task.error_name, "naive": production.task.naive_name} if regression else {}
    return decide(example_scores(candidate, new), example_scores(production, new), example_scores(candidate, old),
                  example_scores(production, old), tolerance=tolerance, regression=regression,
                  new_chance=chance_scores(production, new, regression), **words)


def chance_scores(run: Run, examples: Examples, regression: bool) -> np.ndarray:
    """Per-example scores of a naive answer on ``examples``: their most common class (1 where an example has
    it), or for a regressor its kind's naive answer (negative errors: of the median value, of the
    seasonal-naive forecast)."""
    if regression:
        return -run.task.naive_errors(run, examples)
    labels = class_labels(examples)
    common = Counter(labels).most_common(1)[0][0]
    return np.array([label == common for label in labels], dtype=np.float64)


def rollback(reference: str, *, workspace: str | os.PathLike | None = None, reason: str | None = None,
             force: bool = False) -> ModelVersion:
    """Make an earlier version production again: one that was production before, or with ``force`` and a
    ``reason``, any earlier one (recorded as forced)."""
    name, number = parse_reference(reference)
    with Workspace.open(workspace) as store:
        return Registry(store).rollback(name, number, reason=reason, force=force)


def archive(reference: str, *, workspace: str | os.PathLike | None = None, reason: str | None = None
            ) -> ModelVersion:
    name, number = parse_reference(reference)
    if number is None:
        raise ConfigError([f"archive needs a version: NAME:VERSION, e.g. {name}:1."])
    with Workspace.open(workspace) as store:
        return Registry(store).archive(name, number, reason=reason)


def registered_models(workspace: str | os.PathLike | None = None) -> dict[str, list[ModelVersion]]:
    """Every registered name with its versions."""
    with Workspace.open(workspace) as store:
        registry = Registry(store)
        return {name: registry.versions(name) for name in registry.names()}


def show(reference: str, workspace: str | os.PathLike | None = None) -> tuple[ModelVersion, list[dict[str, Any]]]:
    """A version (production where no version is given) and the name's history of stage changes."""
    name, number = parse_reference(reference)
    with Workspace.open(workspace) as store:
        registry = Registry(store)
        return registry.get(name, number), registry.events(name)
