"""Has new data moved away from what the production version was trained on? Three kinds of evidence, each a
test against the version's kept samples, and a verdict with a recommendation:

- the labels: a chi-squared test of the new labels' distribution against the training sample's (for a
  regressor, an MMD test on the target values); classes the model has never seen are named;
- the inputs: an MMD two-sample test on the model's own representation (the vector its head reads) of its
  baseline examples and of the new inputs, with a permutation p-value;
- the model: its mean confidence on the new inputs against the baseline, and where the new data has labels
  its accuracy (or mean absolute error) against the same baseline, with a two-proportion test.

The baseline is data the version never trained on: the examples an update (``adapt``) kept for its gate, which
no trial saw, or else its holdout. A model represents the examples it was trained on more tightly than any others,
so new inputs compared with its training sample would look moved when they are not. A plainly registered
version's holdout is a sample of the validation data that chose its best epoch and recipe (or that its final fit
trained on): its accuracy there is optimistic, and the accuracy evidence says so.

``verdict`` is a pure function of that evidence.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tuneloop.continual.samples import Examples, class_labels, load_examples
from tuneloop.continual.scoring import embeddings, example_scores, is_regressor, predict_examples, read_like
from tuneloop.continual.stats import TestResult, chi_squared_homogeneity, mmd_permutation_test, two_proportion_test
from tuneloop.continual.versions import GATE_NEW, GATE_OLD, holdout_trained_on, version_run
from tuneloop.errors import DataError
from tuneloop.run import Predictions
from tuneloop.store.registry import Registry, parse_reference
from tuneloop.store.workspace import Workspace
from tuneloop.tasks import DataOptions

ALPHA = 0.01  # a test's p-value below this is evidence of a shift
CONFIDENCE_DROP = 0.05  # mean top-class probability lower than the baseline's by this much is worth saying
MAX_COMPARED = 500  # examples per side embedded for the input test


@dataclass(frozen=True)
class Evidence:
    name: str  # "labels", "inputs", "confidence", "accuracy" (or "error" for a regressor)
    shifted: bool
    summary: str
    statistic: float | None = None
    p_value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftReport:
    version: str
    n_new: int
    evidence: list[Evidence]
    new_classes: list[str]
    verdict: str  # "no drift", "drift", "drift, and the model is worse"
    recommendation: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "n_new": self.n_new, "verdict": self.verdict,
                "recommendation": self.recommendation, "new_classes": self.new_classes,
                "evidence": [asdict(e) for e in self.evidence]}


def drift(name: str, data: Any, *, workspace: str | os.PathLike | None = None, text_col: str | None = None,
          label_col: str | None = None, image_col: str | None = None, labelled: bool | None = None,
          seed: int = 0) -> DriftReport:
    """Compare ``data`` with what ``name``'s production version (or ``name:VERSION``) was trained on. Labels
    are used where the data has them (``labelled`` None: where a label column is found)."""
    reference, number = parse_reference(name)
    with Workspace.open(workspace) as store:
        version = Registry(store).get(reference, number)
        run = version_run(store, version)
        options = DataOptions.from_dict(version.lineage.get("data_options"))
        new = _read(run, data, options, labelled, text_col, label_col, image_col)
        replay = load_examples(version.folder, "replay")
        reference, caveat = baseline(version)
        regression = is_regressor(run)
        evidence, new_classes = [], []
        has_labels = _has_labels(new)
        if has_labels:
            if regression:
                evidence.append(_target_shift(run, replay, new, seed))
            else:
                labels_test = chi_squared_homogeneity(Counter(class_labels(replay)), Counter(class_labels(new)))
                new_classes = sorted(set(class_labels(new)) - set(run.classes))
                evidence.append(_label_evidence(labels_test, new_classes))
        rng = np.random.default_rng(seed)
        old_sample = reference.subset(_some(len(reference), rng))
        new_sample = new.subset(_some(len(new), rng))
        inputs = mmd_permutation_test(embeddings(run, old_sample), embeddings(run, new_sample), seed=seed)
        evidence.append(Evidence(
            "inputs", bool(inputs.p_value < ALPHA),
            f"the model's representation of the new inputs {'differs from' if inputs.p_value < ALPHA else 'matches'}"
            f" its baseline's, examples it never trained on (MMD {inputs.statistic:.4g}, p = {inputs.p_value:.3g}, "
            f"{inputs.detail['n_reference']} vs {inputs.detail['n_new']} examples)",
            inputs.statistic, inputs.p_value, inputs.detail))
        predicted: dict[str, Predictions | None] = {"holdout": None, "new": None}
        if not regression:  # a regressor's errors are its kind's to compute, from predictions or not
            predicted = {"holdout": predict_examples(run, reference), "new": predict_examples(run, new)}
            evidence.append(_confidence(predicted["holdout"], predicted["new"]))
        if has_labels:
            evidence.append(_performance(run, reference, new, regression, predicted, caveat))
        verdict, recommendation = verdict_for(evidence, new_classes, version.ref, has_labels)
        report = DriftReport(version.ref, len(new), evidence, new_classes, verdict, recommendation)
        store.record_drift(version.name, version.version, str(getattr(new, "source", data)), report.to_dict())
    return report


def verdict_for(evidence: list[Evidence], new_classes: list[str], ref: str, has_labels: bool) -> tuple[str, str]:
    """The verdict and what to do, from the evidence alone."""
    shifted = [e.name for e in evidence if e.shifted]
    worse = any(e.shifted for e in evidence if e.name in ("accuracy", "error"))
    name = ref.split(":")[0]
    if not shifted and not new_classes:
        return "no drift", f"nothing to do: {ref} sees the new data as it saw its training data."
    if worse or new_classes:
        what = f"new classes ({', '.join(new_classes)})" if new_classes else "the model does worse on it"
        return ("drift, and the model is worse" if worse else "drift: new classes",
                f"update the model: tuneloop adapt {name} DATA ({what}; shifted: {', '.join(shifted) or 'none'}).")
    if has_labels:
        return "drift", (f"the data has moved ({', '.join(shifted)}) but {ref} does as well on it as on its "
                         f"baseline: no update needed yet; check again with the next data.")
    return "drift", (f"the data has moved ({', '.join(shifted)}): label a sample of it and run tuneloop drift "
                     f"again to see whether {ref} does worse, or update it with tuneloop adapt {name} DATA.")


def _read(run, data: Any, options: DataOptions, labelled: bool | None, text_col, label_col, image_col) -> Examples:
    if labelled is not None:
        return read_like(run, data, options, labelled=labelled, text_col=text_col, label_col=label_col,
                         image_col=image_col)
    try:
        return read_like(run, data, options, labelled=True, text_col=text_col, label_col=label_col,
                         image_col=image_col)
    except DataError:  # no label column (or labels missing): compare the inputs alone
        return read_like(run, data, options, labelled=False, text_col=text_col, label_col=label_col,
                         image_col=image_col)


def _has_labels(examples: Examples) -> bool:
    return examples.has_labels


def baseline(version) -> tuple[Examples, str]:
    """What new data is compared with, and how it leans: the examples an update kept for its gate (new and old
    data; no trial saw them), else the version's holdout, with the caveat that the version was chosen on it."""
    if (version.folder / f"{GATE_NEW}.json").exists():
        return load_examples(version.folder, GATE_NEW).joined(load_examples(version.folder, GATE_OLD)), ""
    return load_examples(version.folder, "holdout"), (
        f"optimistic baseline: {version.ref}'s holdout is a sample of the validation data "
        + ("its final fit trained on" if holdout_trained_on(version) else "that chose its best epoch and recipe")
        + ", so its score there overstates it and part of a drop on new data may be that; a version made by "
          "adapt keeps examples no trial saw")


def _some(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=min(n, MAX_COMPARED), replace=False))


def _label_evidence(test: TestResult, new_classes: list[str]) -> Evidence:
    shares = test.detail.get("shares", {})
    moved = sorted(shares.items(), key=lambda kv: -abs(kv[1]["new"] - kv[1]["reference"]))[:3]
    listed = ", ".join(f"{name} {s['reference']:.1%} -> {s['new']:.1%}" for name, s in moved)
    unseen = f"; classes the model has never seen: {', '.join(new_classes)}" if new_classes else ""
    shifted = bool(test.p_value < ALPHA or new_classes)
    return Evidence("labels", shifted,
                    f"label shares {'moved' if shifted else 'match'} (chi-squared {test.statistic:.4g}, "
                    f"df {test.detail.get('df')}, p = {test.p_value:.3g}; most moved: {listed}){unseen}",
                    test.statistic, test.p_value, {"shares": shares, "new_classes": new_classes})


def _target_shift(run, replay: Examples, new: Examples, seed: int) -> Evidence:
    old = np.asarray(run.task.truth(run, replay), dtype=np.float64)
    now = np.asarray(run.task.truth(run, new), dtype=np.float64)
    test = mmd_permutation_test(old, now, seed=seed)
    shifted = bool(test.p_value < ALPHA)
    what = run.task.target_name
    return Evidence("labels", shifted, f"{what} {'moved' if shifted else 'match'}: mean {old.mean():.4g} -> "
                    f"{now.mean():.4g}, std {old.std():.4g} -> {now.std():.4g} (MMD p = {test.p_value:.3g})",
                    test.statistic, test.p_value, {"old_mean": float(old.mean()), "new_mean": float(now.mean())})


def _confidence(holdout: Predictions, new: Predictions) -> Evidence:
    before = float(holdout.probabilities.max(1).mean())
    now = float(new.probabilities.max(1).mean())
    shifted = bool(before - now > CONFIDENCE_DROP)
    return Evidence("confidence", shifted, f"mean confidence {now:.3f} on the new data against {before:.3f} on the "
                    "baseline" + (" (lower: the model is less sure of the new inputs)" if shifted else ""),
                    details={"holdout": before, "new": now})


def _performance(run, holdout: Examples, new: Examples, regression: bool,
                 predicted: dict[str, Predictions | None], caveat: str = "") -> Evidence:
    before = example_scores(run, holdout, predicted["holdout"])
    now = example_scores(run, new, predicted["new"])
    noted = f" ({caveat})" if caveat else ""
    if regression:
        worse = bool(-now.mean() > 1.1 * -before.mean())
        return Evidence("error", worse, f"{run.task.error_name} {-now.mean():.4g} on the new data against "
                        f"{-before.mean():.4g} on the baseline{noted}",
                        details={"holdout": float(-before.mean()), "new": float(-now.mean()), "caveat": caveat})
    test = two_proportion_test(int(before.sum()), len(before), int(now.sum()), len(now))
    worse = bool(test.p_value < ALPHA and now.mean() < before.mean())
    return Evidence("accuracy", worse, f"accuracy {now.mean():.3f} on the new data against {before.mean():.3f} on the "
                    f"baseline (p = {test.p_value:.3g}){noted}", test.statistic, test.p_value,
                    {"holdout": float(before.mean()), "new": float(now.mean()), "caveat": caveat})
