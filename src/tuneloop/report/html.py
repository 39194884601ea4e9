"""The study report: one self-contained HTML file that says what a study tried, why, and what it found.

Everything comes from the workspace (the study's trials, their runs and per-epoch curves, Optuna's record
of the same study), except the confusion matrix: that is recomputed by rebuilding the study's exact
validation split from its stored options and running the best model on it, so a report never shows a
matrix that was not measured.

The file has no external references: plots are PNGs embedded as base64, the style sheet is inline, so it
can be mailed, archived or opened offline. Every user-supplied string (study id, data paths, class names,
reasons) is HTML-escaped on the way in.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tuneloop.config import Recipe
from tuneloop.errors import ConfigError, RunNotFoundError, TuneloopError
from tuneloop.store.atomic import write_text_atomic
from tuneloop.store.workspace import RunRecord, Workspace

__all__ = ["spearman_rho", "write_report"]

SEED_CHECK_PREFIX = "seed check"
MIN_OPTUNA_TRIALS = 4  # fewer completed trials with sampled parameters tell an importance model nothing
KNOBS = [f.name for f in fields(Recipe)]
# Two-sided 95% Student t quantiles by degrees of freedom, for the seed check's interval of the mean.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
BEST_COLOR = "#d62728"


# -- what the report reads ------------------------------------------------------------------------------

@dataclass
class StudyRecord:
    """A study as the workspace holds it: its row, its trials in order, and their runs and curves."""

    row: dict[str, Any]
    trials: list[dict[str, Any]]
    runs: dict[str, RunRecord]
    epochs: dict[str, list[dict[str, float]]]
    root: Path

    @property
    def id(self) -> str:
        return self.row["id"]

    @property
    def metric(self) -> str:
        return self.row["metric"]

    @property
    def completed(self) -> list[dict[str, Any]]:
        return [t for t in self.trials if t["status"] == "completed" and t["value"] is not None]

    @property
    def best(self) -> dict[str, Any] | None:
        """As the study driver picks it: the completed trial with the highest objective, the first on ties."""
        completed = self.completed
        return max(completed, key=lambda t: t["value"]) if completed else None

    def num_layers(self) -> int | None:
        """The backbone's encoder depth, which ``trainable_layers="all"`` stands for (plus the embeddings)."""
        for run in self.runs.values():
            try:
                config = json.loads((Path(run.backbone) / "config.json").read_text())
                return int(config["num_hidden_layers"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return None


def read_study(store: Workspace, study_id: str) -> StudyRecord:
    studies = {row["id"]: row for row in store.studies()}
    if study_id not in studies:
        known = ", ".join(studies) or "none"
        raise RunNotFoundError(f"{store.root}: no study '{study_id}'. Studies here: {known}.")
    trials = store.trials(study_id)
    run_ids = {t["run_id"] for t in trials if t["run_id"]}
    runs = {r.id: r for r in store.runs() if r.id in run_ids}
    epochs = {run_id: store.epochs(run_id) for run_id in run_ids}
    return StudyRecord(studies[study_id], trials, runs, epochs, store.root)


# -- pure numbers ---------------------------------------------------------------------------------------

def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, tied values sharing their average rank, as Spearman's rho defines them."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, group = np.unique(values, return_inverse=True)
    return (np.bincount(group, weights=ranks) / np.bincount(group))[group]


def spearman_rho(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation of ``x`` and ``y``; None below 3 pairs or when either side is constant,
    where a correlation says nothing."""
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length. Got {len(x)} and {len(y)} instead.")
    if len(x) < 3:
        return None
    rx, ry = _ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float))
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def mean_and_half_width(values: list[float]) -> tuple[float, float | None]:
    """The mean and the half-width of its 95% Student-t interval (None for a single value)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None
    t = T_975[len(values) - 2] if len(values) - 1 <= len(T_975) else 1.96
    return mean, t * float(np.std(values, ddof=1)) / math.sqrt(len(values))


def varying_knobs(recipes: list[dict[str, Any]]) -> list[str]:
    """The recipe knobs that take more than one value across ``recipes``, in the Recipe's field order."""
    return [k for k in KNOBS if len({json.dumps(r.get(k)) for r in recipes}) > 1]


def knob_number(value: Any, num_layers: int | None) -> float | None:
    """A knob value on a number line, for rank correlation: "all" layers is one more than the deepest
    partial depth (the model's layer count, + 1 for the embeddings); strings have no order, so None."""
    if value == "all":
        return float(num_layers + 1) if num_layers is not None else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def recipe_without_seed(recipe: dict[str, Any]) -> str:
    """Two trials with the same key ran the same experiment with possibly different seeds."""
    return json.dumps({k: v for k, v in recipe.items() if k != "seed"}, sort_keys=True)


# -- formatting -----------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _value(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _knob(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min {rest:02d} s"


def _objective_name(metric: str) -> str:
    return "−val loss" if metric == "loss" else f"val {metric}"


def _plot_text(text: Any) -> str:
    """Text for matplotlib: a '$' would start mathtext and fail to render on odd user strings."""
    return str(text).replace("$", r"\$")


def _png(figure: Figure) -> str:
    """The figure as a base64 PNG, drawn by Agg on this figure alone (no pyplot, no global backend)."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(figure: Figure, alt: str, caption: str) -> str:
    return (f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{_png(figure)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _status(status: str) -> str:
    return f'<span class="chip status-{_e(status)}">{_e(status)}</span>'


def _label(label: str | None) -> str:
    return f'<span class="chip diag-{_e(label)}">{_e(label)}</span>' if label else ""


def _table(header: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    """Cells are HTML already (escaped by the caller), so a cell may hold a chip or a mark."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(f'<tr class="{cls}">' + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                   for row, cls in zip(rows, row_classes or [""] * len(rows), strict=True))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# -- sections -------------------------------------------------------------------------------------------

def header_section(study: StudyRecord) -> str:
    """Who, what and the outcome at a glance: enough to decide whether to read further."""
    row, options, best = study.row, study.row["options"], study.best
    facts = [
        ("Strategy", row["strategy"]), ("Metric", row["metric"]), ("Status", row["status"]),
        ("Stop reason", row["stop_reason"] or "(still running or interrupted)"),
        ("Trials", f"{len(study.trials)} ({len(study.completed)} completed)"),
        ("Time spent", _duration(row["spent_seconds"])), ("Budget", options.get("budget")),
        ("Data", options.get("data")), ("Validation", options.get("val") or
                                        f"stratified {options.get('val_fraction')} of the data"),
        ("Model", options.get("model") or "packaged all-MiniLM-L6-v2"), ("Started", row["created_at"]),
    ]
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    if best is None:
        outcome = '<p class="best">No trial completed, so the study has no best model.</p>'
    else:
        metrics = study.runs[best["run_id"]].metrics if best["run_id"] in study.runs else {}
        shown = [("val accuracy", _value(metrics.get("val_accuracy"))),
                 ("val macro-F1", _value(metrics.get("val_macro_f1"))),
                 ("val loss", _value(metrics.get("val_loss"))),
                 ("majority-class rate", _value(metrics.get("majority_class_rate"))),
                 ("best epoch", f"{metrics.get('best_epoch', '—')} of {metrics.get('epochs_run', '—')}")]
        outcome = (f'<p class="best">Best: <b>trial {best["number"]}</b>, run <code>{_e(best["run_id"])}</code>, '
                   f"{_e(_objective_name(study.metric))} <b>{_value(best['value'])}</b> — "
                   + ", ".join(f"{_e(k)} {_e(v)}" for k, v in shown) + "</p>")
    return f'<header><h1>Study {_e(study.id)}</h1>{outcome}<dl class="facts">{items}</dl></header>'


def _curve(epochs: list[dict[str, float]], column: str) -> tuple[list[int], list[float]]:
    return [int(e["epoch"]) for e in epochs], [e[column] for e in epochs]


def _val_metric_figure(study: StudyRecord) -> Figure:
    column = "val_loss" if study.metric == "loss" else f"val_{study.metric}"
    best = study.best
    figure = Figure(figsize=(9, 4.2), layout="constrained")
    axes = figure.add_subplot()
    with_curves = [t for t in study.trials if study.epochs.get(t["run_id"])]
    for trial in with_curves:
        is_best = best is not None and trial["number"] == best["number"]
        x, y = _curve(study.epochs[trial["run_id"]], column)
        note = "" if trial["status"] == "completed" else f" ({trial['status']})"
        axes.plot(x, y, marker="o", markersize=3 if not is_best else 5, linewidth=3 if is_best else 1.2,
                  alpha=1 if is_best else 0.55, color=BEST_COLOR if is_best else None, zorder=3 if is_best else 2,
                  linestyle="-" if trial["status"] == "completed" else "--",
                  label=f"trial {trial['number']}{' (best)' if is_best else ''}{note}")
    axes.set_xlabel("epoch")
    axes.set_ylabel(column.replace("_", " "))
    axes.set_title(f"{column.replace('_', ' ')} per epoch, one line per trial")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if with_curves:
        axes.legend(fontsize=8, ncols=max(1, math.ceil(len(with_curves) / 14)), loc="center left",
                    bbox_to_anchor=(1.01, 0.5), frameon=False)
    return figure


def _loss_figure(study: StudyRecord) -> Figure:
    """Small multiples, since train and val loss of many trials on one axes is unreadable."""
    with_curves = [t for t in study.trials if study.epochs.get(t["run_id"])]
    columns = max(1, min(4, len(with_curves)))
    rows = max(1, math.ceil(len(with_curves) / columns))
    figure = Figure(figsize=(2.6 * columns + 1.0, 2.2 * rows + 0.6), layout="constrained")
    grid = figure.subplots(rows, columns, sharey=True, squeeze=False)
    best = study.best
    for axes, trial in zip(grid.flat, with_curves, strict=False):
        epochs = study.epochs[trial["run_id"]]
        is_best = best is not None and trial["number"] == best["number"]
        axes.plot(*_curve(epochs, "train_loss"), marker="o", markersize=3, color="#1f77b4", label="train loss")
        axes.plot(*_curve(epochs, "val_loss"), marker="o", markersize=3, color="#ff7f0e", label="val loss")
        axes.set_title(f"trial {trial['number']}{' ★ best' if is_best else ''}"
                       f"{'' if trial['status'] == 'completed' else ' (' + trial['status'] + ')'}",
                       fontsize=9, color=BEST_COLOR if is_best else "black", fontweight="bold" if is_best else None)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
    for axes in grid.flat[len(with_curves):]:
        axes.set_visible(False)
    handles, labels = grid.flat[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside upper center", ncols=2, fontsize=9, frameon=False)
    figure.supxlabel("epoch", fontsize=9)
    return figure


def curves_section(study: StudyRecord) -> str:
    """The curves are the evidence every diagnosis was read from, so they come before the decisions."""
    if not any(study.epochs.get(t["run_id"]) for t in study.trials):
        return "<section><h2>Learning curves</h2><p>No trial recorded an epoch yet.</p></section>"
    return ("<section><h2>Learning curves</h2>"
            + _figure(_val_metric_figure(study), "validation metric per epoch of every trial",
                      "The study's validation metric per epoch; the best trial is the thick red line, "
                      "dashed lines are trials that did not complete.")
            + _figure(_loss_figure(study), "train and validation loss per trial",
                      "Train and validation loss per epoch, one panel per trial.")
            + "</section>")


def timeline_section(study: StudyRecord, knobs: list[str]) -> str:
    """The readable account of every decision: why each trial was run, what it gave, what was read off it."""
    items, best_so_far = [], None
    best = study.best
    for trial in study.trials:
        value = trial["value"]
        if trial["status"] == "completed" and value is not None:
            if best_so_far is None or value > best_so_far:
                verdict = "new best" if best_so_far is None else f"new best (+{value - best_so_far:.4f})"
                best_so_far = value
            else:
                verdict = f"below the best so far ({value - best_so_far:+.4f})"
        else:
            verdict = ""
        is_best = best is not None and trial["number"] == best["number"]
        recipe = " · ".join(f"{_e(k)}={_e(_knob(trial['recipe'].get(k)))}" for k in knobs)
        result = (f"{_status(trial['status'])} {_e(_objective_name(study.metric))} <b>{_value(value)}</b>"
                  + (f" — {_e(verdict)}" if verdict else "") + f" · {_duration(trial['seconds'])}"
                  + (f" · run <code>{_e(trial['run_id'])}</code>" if trial["run_id"] else ""))
        items.append(
            f'<li class="{"best" if is_best else ""}">'
            f'<div class="trial-head">Trial {trial["number"]}{" <span class=star>★ best</span>" if is_best else ""}'
            f"</div>"
            f'<p class="why"><span class="tag">why</span> {_e(trial["reason"])}</p>'
            + (f'<p class="recipe"><span class="tag">recipe</span> {recipe}</p>' if recipe else "")
            + f'<p class="result"><span class="tag">result</span> {result}</p>'
            + (f'<p class="diagnosis"><span class="tag">read</span> {_label(trial["diagnosis"])} '
               f'{_e(trial["diagnosis_summary"] or "")}</p>' if trial["diagnosis"] else "")
            + "</li>")
    return ('<section><h2>Decision timeline</h2><p class="note">Each trial in order: the reason it was proposed '
            "(the diagnosis it answers and the change it makes), its result, and the diagnosis read off its "
            f'curves, which the next proposal answers.</p><ol class="timeline">{"".join(items)}</ol></section>')


def trials_section(study: StudyRecord, knobs: list[str]) -> str:
    """Every trial on one line, with only the knobs that differ between trials, so the table stays narrow."""
    best = study.best
    rows, classes = [], []
    for trial in study.trials:
        is_best = best is not None and trial["number"] == best["number"]
        rows.append([f"{trial['number']}{' ★' if is_best else ''}", _status(trial["status"]), _value(trial["value"]),
                     *(_e(_knob(trial["recipe"].get(k))) for k in knobs), _label(trial["diagnosis"]),
                     _duration(trial["seconds"]), f"<code>{_e(trial['run_id'] or '')}</code>"])
        classes.append("best" if is_best else "")
    header = ["#", "status", _e(_objective_name(study.metric)), *(_e(k) for k in knobs), "diagnosis", "time", "run"]
    note = ("Knobs not shown were the same in every trial." if knobs else "Every trial ran the same recipe.")
    return (f'<section><h2>Trials</h2><p class="note">★ marks the best trial. {note}</p>'
            f"{_table(header, rows, classes)}</section>")


@dataclass(frozen=True)
class KnobEffect:
    """How one knob related to the objective across the completed trials."""

    knob: str
    best_by_value: list[tuple[Any, float]]  # each value tried and the best objective reached with it
    rho: float | None
    n: int


def knob_effects(trials: list[dict[str, Any]], num_layers: int | None) -> list[KnobEffect]:
    """For each knob that took more than one value among ``trials`` (completed ones): the best objective per
    value, and the rank correlation of the knob with the objective. The seed is left out: it is not a
    choice but noise, which the seed check measures."""
    effects = []
    for knob in varying_knobs([t["recipe"] for t in trials]):
        if knob == "seed":
            continue
        best: dict[str, tuple[Any, float]] = {}
        for t in trials:
            key = json.dumps(t["recipe"][knob])
            if key not in best or t["value"] > best[key][1]:
                best[key] = (t["recipe"][knob], t["value"])
        numbers = [knob_number(t["recipe"][knob], num_layers) for t in trials]
        rho = None
        if all(x is not None for x in numbers):
            rho = spearman_rho(numbers, [t["value"] for t in trials])
        order = sorted(best.values(), key=lambda pair: (knob_number(pair[0], num_layers) is None,
                                                         knob_number(pair[0], num_layers) or 0, str(pair[0])))
        effects.append(KnobEffect(knob, order, rho, len(trials)))
    return effects


def optuna_importances(study: StudyRecord) -> tuple[dict[str, float] | None, str]:
    """Optuna's own parameter importances where it has enough to model, else None and the reason why.

    Optuna's parameters are the sampler's (e.g. ``lr_multiplier``), not recipe knobs; the guided strategy
    fixes each recipe instead of sampling, so its trials have none.
    """
    import optuna

    try:
        storage = f"sqlite:///{study.root / 'tuneloop.db'}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna_study = optuna.load_study(study_name=study.id, storage=storage)
            sampled = [t for t in optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                       if t.params]
            if len(sampled) < MIN_OPTUNA_TRIALS:
                return None, (f"Optuna's importances need at least {MIN_OPTUNA_TRIALS} completed trials with "
                              f"sampled parameters; this study has {len(sampled)} (the guided strategy fixes each "
                              "recipe rather than sampling it).")
            return optuna.importance.get_param_importances(optuna_study), ""
    except Exception as exc:  # an optional view: any failure is reported in the page, never fatal
        return None, f"Optuna's importances are unavailable: {type(exc).__name__}: {exc}"


def _importance_figure(effects: list[KnobEffect], importances: dict[str, float] | None) -> Figure:
    correlated = [e for e in effects if e.rho is not None]
    panels = 1 + (importances is not None)
    height = 0.9 + 0.4 * max(len(correlated), len(importances or {}), 2)
    figure = Figure(figsize=(5 * panels + 1, height), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    names = [e.knob for e in correlated]
    rhos = [e.rho for e in correlated]
    axes[0].barh(names, rhos, color=["#2ca02c" if r >= 0 else "#d62728" for r in rhos])
    axes[0].axvline(0, color="black", linewidth=0.8)
    axes[0].set_xlim(-1.1, 1.1)
    axes[0].invert_yaxis()
    axes[0].set_title("Spearman ρ of knob with objective", fontsize=10)
    for y, r in enumerate(rhos):
        axes[0].text(r + (0.04 if r >= 0 else -0.04), y, f"{r:+.2f}", va="center",
                     ha="left" if r >= 0 else "right", fontsize=8)
    if not correlated:
        axes[0].text(0, 0.5, "no numeric knob with enough trials", ha="center", va="center",
                     transform=axes[0].transAxes, fontsize=9)
        axes[0].set_yticks([])
    if importances is not None:
        ranked = sorted(importances.items(), key=lambda kv: kv[1], reverse=True)
        axes[1].barh([_plot_text(k) for k, _ in ranked], [v for _, v in ranked], color="#1f77b4")
        axes[1].set_xlim(0, 1.05)
        axes[1].invert_yaxis()
        axes[1].set_title("Optuna parameter importance", fontsize=10)
    for ax in axes:
        ax.tick_params(labelsize=9)
        ax.grid(axis="x", alpha=0.3)
    return figure


def importance_section(study: StudyRecord) -> str:
    """Which knobs mattered: a rough, honest view (few trials, chosen not at random) next to Optuna's."""
    effects = knob_effects(study.completed, study.num_layers())
    importances, why_not = optuna_importances(study)
    if not effects and importances is None:
        return ("<section><h2>Parameter importance</h2><p>No knob took more than one value among the completed "
                f"trials, so there is nothing to compare.</p><p class=note>{_e(why_not)}</p></section>")
    rows = []
    for effect in effects:
        top = max(value for _, value in effect.best_by_value)
        cells = " · ".join((f"<b>{_e(_knob(v))}: {_value(best)}</b>" if best == top else
                            f"{_e(_knob(v))}: {_value(best)}") for v, best in effect.best_by_value)
        rho = "—" if effect.rho is None else f"{effect.rho:+.2f}"
        rows.append([_e(effect.knob), cells, f"{rho} (n={effect.n})"])
    table = _table(["knob", f"best {_e(_objective_name(study.metric))} at each value", "Spearman ρ"], rows)
    optuna_note = ("Right panel: Optuna's importances of the sampler's parameters (normalised to sum to 1)."
                   if importances is not None else _e(why_not))
    return ("<section><h2>Parameter importance</h2>"
            '<p class="note">Spearman ρ ranks each knob against the objective over the completed trials '
            "(trainable_layers 'all' counts as the model's layer count + 1; text knobs have no order and no ρ). "
            "With few trials, each chosen from the last, read it as a hint, not a measurement.</p>"
            + table
            + _figure(_importance_figure(effects, importances), "parameter importance bar chart", optuna_note)
            + "</section>")


def _validation_confusion(study: StudyRecord, best: dict[str, Any]) -> tuple[np.ndarray, list[str], str]:
    """Rebuild the study's validation split from its stored options and run the best model on it."""
    from tuneloop.api import TextTask, load_run
    from tuneloop.training.metrics import classification_metrics, confusion_matrix

    options = study.row["options"]
    task = TextTask.load(options["data"], options["val"], text_col=options["text_col"],
                         label_col=options["label_col"], model=options["model"],
                         val_fraction=options["val_fraction"], seed=Recipe.from_dict(options["recipe"]).seed)
    run = load_run(best["run_id"], study.root)
    index = {name: i for i, name in enumerate(run.classes)}
    unknown = sorted(set(task.val.labels) - set(index))
    if unknown:
        raise ConfigError([f"the validation data now has labels the model never saw: {', '.join(unknown)}"])
    true = np.array([index[label] for label in task.val.labels])
    predicted = run.predict_texts(task.val.texts, run.recipe.precision).probabilities.argmax(1)
    k = len(run.classes)
    accuracy = classification_metrics(true, predicted, k)["accuracy"]
    recorded = run.metrics.get("val_accuracy")
    note = (f"{len(true)} validation examples; accuracy {accuracy:.4f} recomputed now"
            + (f" (recorded at training: {recorded:.4f})" if recorded is not None else "") + ".")
    return confusion_matrix(true, predicted, k), run.classes, note


def _confusion_figure(matrix: np.ndarray, classes: list[str]) -> Figure:
    k = len(classes)
    side = min(14.0, max(4.5, 0.55 * k + 2.5))
    figure = Figure(figsize=(side + 1.2, side), layout="constrained")
    axes = figure.add_subplot()
    # Colour by share of the true class, so a small class's errors are as visible as a large one's.
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class")
    labels = [_plot_text(c) for c in classes]
    axes.set_xticks(range(k), labels, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    axes.set_yticks(range(k), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                axes.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=9 if k <= 12 else 7,
                          color="white" if shares[i, j] > 0.5 else "black")
    return figure


def confusion_section(study: StudyRecord) -> str:
    """Where the best model goes wrong, measured now rather than read back, so it is never stale."""
    best = study.best
    title = "<h2>Confusion matrix of the best model</h2>"
    if best is None:
        return f"<section>{title}<p>No completed trial, so there is no model to evaluate.</p></section>"
    try:
        matrix, classes, note = _validation_confusion(study, best)
    except (TuneloopError, OSError) as exc:
        return (f"<section>{title}<p>Not available: the validation data or the model could not be read again "
                f"({_e(exc)}).</p></section>")
    return (f"<section>{title}"
            + _figure(_confusion_figure(matrix, classes), "confusion matrix heatmap",
                      f"Rows: true class, columns: predicted; numbers are counts. {_e(note)}")
            + "</section>")


def seed_check_section(study: StudyRecord) -> str:
    """Whether the winner's lead survives other seeds: the spread over seeds is the noise every gap in
    the trials table should be compared with."""
    checks = [t for t in study.trials if t["reason"].lower().startswith(SEED_CHECK_PREFIX)]
    title = "<h2>Seed check</h2>"
    if not checks:
        return (f"<section>{title}<p>The seed check was not run: no trial re-ran a recipe with another seed, so the "
                "gaps between trials above include seed noise of unknown size.</p></section>")
    keys = list(dict.fromkeys(recipe_without_seed(t["recipe"]) for t in checks))
    rows = []
    for key in keys:
        group = [t for t in study.trials if recipe_without_seed(t["recipe"]) == key]
        scored = [t for t in group if t["status"] == "completed" and t["value"] is not None]
        values = [t["value"] for t in scored]
        if values:
            mean, half = mean_and_half_width(values)
            summary = f"<b>{mean:.4f}</b>" + ("" if half is None else f" ± {half:.4f}")
            spread = f"{min(values):.4f} – {max(values):.4f}"
        else:
            summary, spread = "—", "—"
        rows.append([", ".join(str(t["number"]) for t in group),
                     ", ".join(_e(t["recipe"].get("seed")) for t in scored) or "—",
                     ", ".join(_value(v) for v in values) or "—", summary, spread, str(len(values))])
    header = ["trials", "seeds", _e(_objective_name(study.metric)), "mean ± half-width", "min – max", "n"]
    return (f'<section>{title}<p class="note">Trials that ran the same recipe with different seeds, grouped by recipe '
            "(the original trial included). The half-width is that of the 95% Student-t interval of the mean.</p>"
            f"{_table(header, rows)}</section>")


# -- the page -------------------------------------------------------------------------------------------

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; margin: 0;
       background: #fafafa; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; background: white; }
h1 { font-size: 26px; margin: 0 0 8px; word-break: break-all; }
h2 { font-size: 20px; margin: 40px 0 12px; padding-bottom: 4px; border-bottom: 2px solid #e5e5e5; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f2f2f2; padding: 0 4px;
       border-radius: 3px; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 12px 0; font-size: 14px; }
.facts dt { color: #666; } .facts dd { margin: 0; word-break: break-all; }
.best { font-size: 16px; }
.note { color: #555; font-size: 14px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e5e5e5; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } tr.best td { background: #fff4e5; font-weight: 600; }
figure { margin: 16px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
.timeline { list-style: none; padding: 0; counter-reset: none; }
.timeline li { border-left: 4px solid #d0d7de; padding: 6px 0 6px 16px; margin: 0 0 14px; }
.timeline li.best { border-left-color: #d62728; background: #fff8f5; }
.timeline p { margin: 2px 0; }
.trial-head { font-weight: 700; font-size: 16px; } .star { color: #d62728; }
.why { font-size: 15px; }
.tag { display: inline-block; min-width: 52px; color: #888; font-size: 12px; text-transform: uppercase;
       letter-spacing: 0.04em; }
.chip { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px; background: #eee; }
.status-completed { background: #dff3e4; } .status-pruned { background: #fff1c2; }
.status-failed, .status-interrupted { background: #fde2e1; } .status-running { background: #e3eefc; }
.diag-good_fit { background: #dff3e4; } .diag-overfitting { background: #fde2e1; }
.diag-underfitting { background: #e3eefc; } .diag-diverged { background: #f8c9c6; }
.diag-too_slow { background: #fff1c2; } .diag-noisy_validation { background: #ece4f7; }
"""


def render(study: StudyRecord) -> str:
    knobs = varying_knobs([t["recipe"] for t in study.trials])
    body = "".join([header_section(study), curves_section(study), timeline_section(study, knobs),
                    trials_section(study, knobs), importance_section(study), confusion_section(study),
                    seed_check_section(study)])
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>tuneloop study {_e(study.id)}</title><style>{STYLE}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


def write_report(workspace: str | Path | None, study_id: str, output: str | Path | None = None) -> Path:
    """Write the HTML report of ``study_id`` to ``output`` (default ``<workspace>/reports/<study>.html``)
    and return its path. The file is written whole or not at all."""
    with Workspace.open(workspace) as store:
        study = read_study(store, study_id)
    if output is None:
        # A study id becomes a file name only if it is a plain name (ids are checked when a study is made).
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", study_id):
            raise ConfigError([f"The study id {study_id!r} cannot be used as a file name; give an output path."])
        output = study.root / "reports" / f"{study_id}.html"
    path = Path(output)
    write_text_atomic(path, render(study))
    return path
