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

from tuneloop.config import LOWER_IS_BETTER, Recipe
from tuneloop.errors import ConfigError, DataError, RunNotFoundError, TuneloopError
from tuneloop.store.atomic import write_text_atomic
from tuneloop.store.workspace import RunRecord, Workspace
from tuneloop.tuning.seeds import (
    ENSEMBLE_PREFIX,
    SeedGroup,
    best_trial,
    is_search,
    is_seed_check,
    is_soup,
    kind_of,
    scored,
    seed_groups,
    seed_verdict,
)

__all__ = ["write_report"]

MIN_OPTUNA_TRIALS = 4  # fewer completed trials with sampled parameters tell an importance model nothing
KNOBS = [f.name for f in fields(Recipe)]
BEST_COLOR = "#d62728"
# Other trials cycle through tab10 without its red, so only the best trial is ever drawn red.
TRIAL_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


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
        return [t for t in self.trials if scored(t)]

    @property
    def best(self) -> dict[str, Any] | None:
        return best_trial(self.trials)

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
    return f"−val {metric}" if metric in LOWER_IS_BETTER else f"val {metric}"


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

def _trial_count(trials: list[dict[str, Any]]) -> str:
    reruns = sum(is_seed_check(t) for t in trials)
    split = f" ({len(trials) - reruns} search + {reruns} seed check)" if reruns else ""
    return f"{len(trials)}{split}, {sum(scored(t) for t in trials)} completed"


def header_section(study: StudyRecord) -> str:
    """Who, what and the outcome at a glance: enough to decide whether to read further."""
    row, options, best, groups = study.row, study.row["options"], study.best, seed_groups(study.trials)
    facts = [
        ("Strategy", row["strategy"]), ("Metric", row["metric"]), ("Status", row["status"]),
        ("Stop reason", row["stop_reason"] or "(still running or interrupted)"),
        ("Trials", _trial_count(study.trials)),
        ("Time spent", _duration(row["spent_seconds"])), ("Budget", options.get("budget")),
        ("Data", options.get("data")), ("Validation", options.get("val") or
                                        f"stratified {options.get('val_fraction')} of the data"),
        ("Model", options.get("model") or _default_model(options.get("task", "text"))),
        ("Started", row["created_at"]),
        ("Seed check", seed_verdict(groups) if groups else "not run"),
        ("Final model", row.get("choice") or "the best trial"),
    ]
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    if best is None:
        outcome = '<p class="best">No trial completed, so the study has no best model.</p>'
    else:
        metrics = study.runs[best["run_id"]].metrics if best["run_id"] in study.runs else {}
        named = [("val accuracy", "val_accuracy"), ("val macro-F1", "val_macro_f1"), ("val ROC AUC", "val_roc_auc"),
                 ("val MASE", "val_mase"), ("seasonal-naive MASE", "seasonal_naive_mase"), ("val sMAPE", "val_smape"),
                 ("val RMSE", "val_rmse"),
                 ("val MAE", "val_mae"), ("val R²", "val_r2"), ("val loss", "val_loss"),
                 ("majority-class rate", "majority_class_rate"), ("RMSE of the mean", "mean_predictor_rmse")]
        shown = [*((label, _value(metrics[key])) for label, key in named if key in metrics),
                 ("best epoch", f"{metrics.get('best_epoch', '—')} of {metrics.get('epochs_run', '—')}")]
        outcome = (f'<p class="best">Best: <b>trial {best["number"]}</b>, run <code>{_e(best["run_id"])}</code>, '
                   f"{_e(_objective_name(study.metric))} <b>{_value(best['value'])}</b> — "
                   + ", ".join(f"{_e(k)} {_e(v)}" for k, v in shown) + "</p>")
        if is_soup(best):
            combined = ("their averaged predictions"
                        if (best.get("evidence") or {}).get("combined_by") == "averaged predictions"
                        else "a weight average (soup) of them")
            outcome += (f'<p class="note">The runs of the recipe with the best mean over seeds combined, {combined}, '
                        "which scored at least their mean (see the seed check).</p>")
        elif kind_of(best) == ENSEMBLE_PREFIX:
            members = ", ".join(map(str, (best.get("evidence") or {}).get("members", [])))
            outcome += ('<p class="note">An ensemble of the recipes that validation could not tell apart, each '
                        "trained on every labelled example where that fitted in the budget (the models of trials "
                        f"{_e(members)}), averaging their predictions; its score is its lead recipe's "
                        "estimate.</p>")
        elif len([g for g in groups if g.values]) >= 2:
            outcome += ('<p class="note">Chosen as the best run of the recipe with the best mean over seeds '
                        "(see the seed check).</p>")
    return f'<header><h1>Study {_e(study.id)}</h1>{outcome}<dl class="facts">{items}</dl></header>'


def _trial_name(trial: dict[str, Any], best: dict[str, Any] | None) -> str:
    """How a plot names a trial: its number, and whether it is the best, a seed-check re-run, unfinished."""
    notes = ["best"] if best is not None and trial["number"] == best["number"] else []
    if is_seed_check(trial):
        notes.append(f"seed {trial['recipe'].get('seed')}")
    if trial["status"] != "completed":
        notes.append(trial["status"])
    return f"trial {trial['number']}" + (f" ({', '.join(notes)})" if notes else "")


def _curve(epochs: list[dict[str, float]], column: str) -> tuple[list[int], list[float]]:
    return [int(e["epoch"]) for e in epochs], [e[column] for e in epochs]


def objective_column(metric: str) -> str:
    """The per-epoch column that a study's metric is read from."""
    return "val_loss" if metric == "loss" else f"val_{metric}"


def _val_metric_figure(study: StudyRecord) -> Figure:
    column = objective_column(study.metric)
    best = study.best
    figure = Figure(figsize=(9, 4.2), layout="constrained")
    axes = figure.add_subplot()
    with_curves = [t for t in study.trials if study.epochs.get(t["run_id"])]
    for i, trial in enumerate(with_curves):
        is_best = best is not None and trial["number"] == best["number"]
        x, y = _curve(study.epochs[trial["run_id"]], column)
        style = (dict(color=BEST_COLOR, linewidth=3, markersize=5, zorder=3) if is_best else
                 dict(color=TRIAL_COLORS[i % len(TRIAL_COLORS)], linewidth=1.2, markersize=3, alpha=0.6))
        axes.plot(x, y, marker="o", linestyle="-" if trial["status"] == "completed" else "--",
                  label=_plot_text(_trial_name(trial, best)), **style)
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
        axes.set_title(_plot_text(_trial_name(trial, best)), fontsize=9, color=BEST_COLOR if is_best else "black",
                       fontweight="bold" if is_best else None)
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
    missing = [str(t["number"]) for t in study.trials if not study.epochs.get(t["run_id"])]
    if len(missing) == len(study.trials):
        return "<section><h2>Learning curves</h2><p>No trial recorded an epoch yet.</p></section>"
    absent = f" Trials {', '.join(missing)} recorded no epoch and are not drawn." if missing else ""
    return ("<section><h2>Learning curves</h2>"
            + _figure(_val_metric_figure(study), "validation metric per epoch of every trial",
                      "The study's validation metric per epoch; the best trial is the thick red line, "
                      f"dashed lines are trials that did not complete.{absent}")
            + _figure(_loss_figure(study), "train and validation loss per trial",
                      "Train and validation loss per epoch, one panel per trial.")
            + "</section>")


def verdicts(trials: list[dict[str, Any]]) -> dict[int, str]:
    """Each completed search trial against the best before it: did this decision pay off? (Seed-check
    re-runs answer another question, which the seed check section weighs.)"""
    found, best_so_far = {}, None
    for trial in trials:
        value = trial["value"]
        if not scored(trial) or not is_search(trial):
            continue
        if trial.get("no_effect"):
            found[trial["number"]] = "no effect: not counted as a step"
        elif best_so_far is None:
            found[trial["number"]] = "new best"
        elif value > best_so_far:
            found[trial["number"]] = f"new best (+{value - best_so_far:.4f})"
        else:
            found[trial["number"]] = f"below the best so far ({value - best_so_far:+.4f})"
        best_so_far = value if best_so_far is None else max(best_so_far, value)
    return found


def _row_classes(trial: dict[str, Any], is_best: bool) -> str:
    """CSS classes that set the best trial and seed-check re-runs apart, in the timeline and the table."""
    return " ".join(name for name, on in (("best", is_best), ("seed", is_seed_check(trial))) if on)


def _timeline_entry(study: StudyRecord, trial: dict[str, Any], knobs: list[str], verdict: str | None,
                    is_best: bool) -> str:
    star = ' <span class="star">★ best</span>' if is_best else ""
    lines = [f'<div class="trial-head">Trial {trial["number"]}{star}</div>',
             f'<p class="why"><span class="tag">why</span> {_e(trial["reason"])}</p>']
    if knobs:
        recipe = " · ".join(f"{_e(k)}={_e(_knob(trial['recipe'].get(k)))}" for k in knobs)
        lines.append(f'<p class="recipe"><span class="tag">recipe</span> {recipe}</p>')
    result = f"{_status(trial['status'])} {_e(_objective_name(study.metric))} <b>{_value(trial['value'])}</b>"
    if verdict:
        result += f" — {_e(verdict)}"
    result += f" · {_duration(trial['seconds'])}"
    if trial["run_id"]:
        result += f" · run <code>{_e(trial['run_id'])}</code>"
    lines.append(f'<p class="result"><span class="tag">result</span> {result}</p>')
    if trial["diagnosis"]:
        lines.append(f'<p class="diagnosis"><span class="tag">read</span> {_label(trial["diagnosis"])} '
                     f'{_e(trial["diagnosis_summary"] or "")}</p>')
    if trial.get("no_effect"):
        lines.append(f'<p class="diagnosis"><span class="tag">same</span> {_e(trial["no_effect"])}</p>')
    classes = _row_classes(trial, is_best)
    opening = f'<li class="{classes}">' if classes else "<li>"
    return opening + "".join(lines) + "</li>"


def timeline_section(study: StudyRecord, knobs: list[str]) -> str:
    """The readable account of every decision: why each trial was run, what it gave, what was read off it."""
    best, found = study.best, verdicts(study.trials)
    entries = "".join(_timeline_entry(study, t, knobs, found.get(t["number"]),
                                      best is not None and t["number"] == best["number"]) for t in study.trials)
    return ('<section><h2>Decision timeline</h2><p class="note">Each trial in order: the reason it was proposed '
            "(the diagnosis it answers and the change it makes), its result, and the diagnosis read off its "
            f'curves, which the next proposal answers.</p><ol class="timeline">{entries}</ol></section>')


def trials_section(study: StudyRecord, knobs: list[str]) -> str:
    """Every trial on one line, with only the knobs that differ between trials, so the table stays narrow."""
    best = study.best
    rows, classes = [], []
    for trial in study.trials:
        is_best = best is not None and trial["number"] == best["number"]
        rows.append([f"{trial['number']}{' ★' if is_best else ''}", _status(trial["status"]), _value(trial["value"]),
                     *(_e(_knob(trial["recipe"].get(k))) for k in knobs), _label(trial["diagnosis"]),
                     _duration(trial["seconds"]), f"<code>{_e(trial['run_id'] or '')}</code>"])
        classes.append(_row_classes(trial, is_best))
    header = ["#", "status", _e(_objective_name(study.metric)), *(_e(k) for k in knobs), "diagnosis", "time", "run"]
    note = ("Knobs not shown were the same in every trial." if knobs else "Every trial ran the same recipe.")
    if any(is_seed_check(t) for t in study.trials):
        note += " Rows in grey italics are seed-check re-runs."
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
        if knob in ("seed", "init_seed"):
            continue
        best: dict[str, tuple[Any, float]] = {}
        for t in trials:
            key = json.dumps(t["recipe"].get(knob))
            if key not in best or t["value"] > best[key][1]:
                best[key] = (t["recipe"].get(knob), t["value"])
        numbers = [knob_number(t["recipe"].get(knob), num_layers) for t in trials]
        rho = None
        if all(x is not None for x in numbers):
            rho = spearman_rho(numbers, [t["value"] for t in trials])
        effects.append(KnobEffect(knob, sorted(best.values(), key=lambda pair: _display_order(pair[0])), rho,
                                  len(trials)))
    return effects


def _display_order(value: Any) -> tuple[int, float, str]:
    """Numbers ascending, then "all" (deeper than any number of layers), then text."""
    if value == "all":
        return 1, 0.0, ""
    number = knob_number(value, None)
    return (0, number, "") if number is not None else (2, 0.0, str(value))


def optuna_importances(study: StudyRecord) -> tuple[dict[str, float] | None, str]:
    """Optuna's own parameter importances where it has enough to model, else None and the reason why.

    Optuna's parameters are the sampler's (e.g. ``lr_multiplier``), not recipe knobs; the guided strategy
    fixes each recipe instead of sampling, so its trials have none.
    """
    import optuna

    try:
        # Its database (SQLite or PostgreSQL), opened read-only: drawing a report changes nothing.
        with warnings.catch_warnings(), Workspace.open(study.root, read_only=True) as store:
            warnings.simplefilter("ignore")
            optuna_study = optuna.load_study(study_name=study.id, storage=store.optuna_storage())
            sampled = [t for t in optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                       if t.params]
            if len(sampled) < MIN_OPTUNA_TRIALS:
                return None, (f"Optuna's importances need at least {MIN_OPTUNA_TRIALS} completed trials with "
                              f"sampled parameters; this study has {len(sampled)} (the guided strategy fixes each "
                              "recipe rather than sampling it).")
            return optuna.importance.get_param_importances(optuna_study), ""
    except Exception as exc:  # an optional view: any failure is reported in the page, never fatal
        return None, f"Optuna's importances are unavailable: {type(exc).__name__}: {exc}"


def _correlation_panel(axes, effects: list[KnobEffect]) -> None:
    correlated = [e for e in effects if e.rho is not None]
    axes.set_title("Spearman ρ of knob with objective", fontsize=10)
    axes.set_xlim(-1.1, 1.1)
    if not correlated:
        axes.text(0.5, 0.5, "no knob with a defined rank correlation\n(too few trials or a constant objective)",
                  ha="center", va="center", transform=axes.transAxes, fontsize=9, color="#555")
        axes.set_yticks([])
        return
    rhos = [e.rho for e in correlated]
    axes.barh([e.knob for e in correlated], rhos, color=["#2ca02c" if r >= 0 else "#d62728" for r in rhos])
    axes.axvline(0, color="black", linewidth=0.8)
    axes.invert_yaxis()
    for y, r in enumerate(rhos):
        axes.text(r + (0.04 if r >= 0 else -0.04), y, f"{r:+.2f}", va="center", ha="left" if r >= 0 else "right",
                  fontsize=8)


def _optuna_panel(axes, importances: dict[str, float]) -> None:
    ranked = sorted(importances.items(), key=lambda kv: kv[1], reverse=True)
    axes.barh([_plot_text(k) for k, _ in ranked], [v for _, v in ranked], color="#1f77b4")
    axes.set_xlim(0, 1.05)
    axes.invert_yaxis()
    axes.set_title("Optuna parameter importance", fontsize=10)


def _importance_figure(effects: list[KnobEffect], importances: dict[str, float] | None) -> Figure:
    panels = 1 + (importances is not None)
    rows = max(sum(e.rho is not None for e in effects), len(importances or {}), 2)
    figure = Figure(figsize=(5 * panels + 1, 0.9 + 0.4 * rows), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    _correlation_panel(axes[0], effects)
    if importances is not None:
        _optuna_panel(axes[1], importances)
    for ax in axes:
        ax.tick_params(labelsize=9)
        ax.grid(axis="x", alpha=0.3)
    return figure


def importance_section(study: StudyRecord) -> str:
    """Which knobs mattered: a rough, honest view (few trials, chosen not at random) next to Optuna's."""
    effects = knob_effects([t for t in study.completed if is_search(t)], study.num_layers())
    importances, why_not = optuna_importances(study)
    if not effects and importances is None:
        return ("<section><h2>Parameter importance</h2><p>No knob took more than one value among the completed "
                f"trials, so there is nothing to compare.</p><p class=note>{_e(why_not)}</p></section>")
    rows = []  # stays empty when only Optuna has something to say
    for effect in effects:
        bests = [best for _, best in effect.best_by_value]
        top = max(bests) if len(set(bests)) > 1 else None  # bold the winning value, if one wins
        cells = " · ".join((f"<b>{_e(_knob(v))}: {_value(best)}</b>" if best == top else
                            f"{_e(_knob(v))}: {_value(best)}") for v, best in effect.best_by_value)
        rho = "—" if effect.rho is None else f"{effect.rho:+.2f}"
        rows.append([_e(effect.knob), cells, f"{rho} (n={effect.n})"])
    table = (_table(["knob", f"best {_e(_objective_name(study.metric))} at each value", "Spearman ρ"], rows)
             if rows else "<p>No recipe knob took more than one value among the completed trials.</p>")
    optuna_note = ("Right panel: Optuna's importances of the sampler's parameters (normalised to sum to 1)."
                   if importances is not None else _e(why_not))
    return ("<section><h2>Parameter importance</h2>"
            '<p class="note">Spearman ρ ranks each knob against the objective over the completed search '
            "trials (seed-check re-runs left out, so the top recipes do not count several times; "
            "trainable_layers 'all' counts as the model's layer count + 1; text knobs have no order and no ρ). "
            "With few trials, each chosen from the last, read it as a hint, not a measurement.</p>"
            + table
            + _figure(_importance_figure(effects, importances), "parameter importance bar chart", optuna_note)
            + "</section>")


def _default_model(modality: str) -> str:
    """What a study of this kind of data trains where no model was named."""
    from tuneloop.tasks import TASKS

    return TASKS[modality].default_model if modality in TASKS else ""


def _best_on_validation(study: StudyRecord, best: dict[str, Any]) -> tuple[Any, Any]:
    """The study's validation split rebuilt from its stored options, and the best run."""
    from tuneloop.pipeline import load_task
    from tuneloop.run import load_run
    from tuneloop.tasks import DataOptions

    options = study.row["options"]
    read_as = DataOptions.from_dict(options, seed=Recipe.from_dict(options["recipe"]).seed)
    task = load_task(options["data"], options["val"], read_as, model=options["model"])
    record = study.runs.get(best["run_id"])
    # Its model folder where the record names one: loading by id would open the workspace for writing.
    return task, load_run(record.artifact if record and record.artifact else best["run_id"], study.root)


def _validation_confusion(task: Any, run: Any) -> tuple[np.ndarray, list[str], str]:
    """The best model run on the validation set now: its confusion matrix, classes and a note."""
    from tuneloop.training.metrics import classification_metrics, confusion_matrix

    index = {name: i for i, name in enumerate(run.classes)}
    unknown = sorted(set(task.val_labels) - set(index))
    if unknown:
        raise DataError(f"the validation data now has labels the model never saw: {', '.join(unknown)}")
    true = np.array([index[label] for label in task.val_labels])
    predicted = run.task.predict(run, task.val, run.recipe.precision).probabilities.argmax(1)
    k = len(run.classes)
    accuracy = classification_metrics(true, predicted, k)["accuracy"]
    recorded = run.metrics.get("val_accuracy")
    note = (f"{len(true)} validation examples; accuracy {accuracy:.4f} recomputed now"
            + (f" (recorded at training: {recorded:.4f})" if recorded is not None else "") + ".")
    return confusion_matrix(true, predicted, k), run.classes, note


def _confusion_figure(matrix: np.ndarray, classes: list[str], title: str) -> Figure:
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
    axes.set_title(_plot_text(title), fontsize=10)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                axes.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=9 if k <= 12 else 7,
                          color="white" if shares[i, j] > 0.5 else "black")
    return figure


def _regression_section(task: Any, run: Any, heading: str) -> str:
    """A regressor's predictions against the true values of the validation examples, measured now (a
    forecaster's: every forecast point; and, where the examples draw themselves, the series with their
    forecasts)."""
    true = np.asarray(run.task.truth(run, task.val), dtype=np.float64)
    predictions = run.predict_examples(task.val, precision=run.recipe.precision)
    predicted = np.asarray(predictions.values, dtype=np.float64)
    scores = run.task.scores(run, task.val, predictions)
    true, points = true.reshape(-1), predicted.reshape(-1)
    figure = Figure(figsize=(5.2, 5.0), layout="constrained")
    axes = figure.add_subplot()
    axes.scatter(true, points, s=14, alpha=0.6, color=TRIAL_COLORS[0])
    low, high = float(min(true.min(), points.min())), float(max(true.max(), points.max()))
    axes.plot([low, high], [low, high], color="#888888", linewidth=1, linestyle="--", label="predicted = true")
    axes.set_xlabel("true value")
    axes.set_ylabel("predicted value")
    axes.set_title(_plot_text(heading), fontsize=9)
    axes.legend(loc="upper left", fontsize=8)
    shown = ", ".join(f"{name.upper() if name != 'r2' else 'R²'} {scores[name]:.4g}"
                      for name in ("mase", "smape", "rmse", "mae", "r2") if name in scores)
    naive = (f"; the seasonal-naive forecast: MASE {scores['seasonal_naive_mase']:.4g}"
             if "seasonal_naive_mase" in scores else "")
    note = f"{len(predicted)} validation examples; {shown} recomputed now{naive}."
    body = _figure(figure, "predicted against true values", f"Each dot is a predicted value. {_e(note)}")
    draw = getattr(task.val, "plot_forecasts", None)  # examples that can show their forecasts in context
    if draw is not None:
        series = Figure(figsize=(9.0, 3.2 * min(3, len(set(task.val.keys)))), layout="constrained")
        draw(series, predicted)
        body += _figure(series, "history, forecasts and truth",
                        "Each series' points, and the best model's forecasts of the validation stretch from "
                        "origins one horizon apart (dashed).")
    return "<section><h2>Predictions of the best model</h2>" + body + "</section>"


ANSWERS_SHOWN = 20
PROMPT_SHOWN = 160  # characters of a prompt a row shows (its end: where the question is)


def _answers_section(task: Any, run: Any, heading: str) -> str:
    """A language model's greedy answers to the first ANSWERS_SHOWN validation prompts, next to the expected
    completions, with its answer loss, perplexity and exact match on them, measured now."""
    sample = task.val.subset(range(min(len(task.val), ANSWERS_SHOWN)))
    predictions = run.predict_examples(sample, precision=run.recipe.precision)
    scores = run.task.scores(run, sample, predictions)
    rows = []
    for prompt, expected, answer in zip(sample.prompts, sample.completions or [], predictions.texts or [],
                                        strict=True):
        text = prompt if isinstance(prompt, str) else " | ".join(m["content"] for m in prompt)
        shown = text if len(text) <= PROMPT_SHOWN else "..." + text[-PROMPT_SHOWN:]
        mark = "yes" if answer.strip() == expected.strip() else "no"
        rows.append(f"<tr><td>{_e(shown)}</td><td>{_e(expected.strip())}</td><td>{_e(answer)}</td>"
                    f"<td>{mark}</td></tr>")
    note = (f"{len(sample)} validation examples, {_e(heading)}: answer loss {scores['loss']:.4f}, perplexity "
            f"{scores['perplexity']:.3g}, exact match {scores['exact_match']:.1%} (greedy answers, measured now).")
    return ("<section><h2>Answers of the best model</h2>"
            f"<p>{note}</p><table><thead><tr><th>prompt</th><th>expected</th><th>answered</th><th>match</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></section>")


def confusion_section(study: StudyRecord) -> str:
    """Where the best model goes wrong, measured now rather than read back, so it is never stale."""
    best = study.best
    title = "<h2>Confusion matrix of the best model</h2>"
    if best is None or not best["run_id"]:
        return f"<section>{title}<p>No completed trial with a saved model, so nothing to evaluate.</p></section>"
    if study.row["strategy"] == "adapt":
        name = study.row["options"].get("name", "NAME")
        return (f"<section>{title}<p>Not drawn for an update: its validation data joins new and kept examples "
                f"that the registry holds. Its gate decision, on holdouts no trial saw, is in "
                f"<code>tuneloop registry show {_e(name)}:VERSION</code>.</p></section>")
    heading = f"trial {best['number']}, run {best['run_id']}, on the validation set"
    try:
        task, run = _best_on_validation(study, best)
        return prediction_section(task, run, heading, title)
    except (TuneloopError, OSError) as exc:
        return (f"<section>{title}<p>Not available: the validation data or the model could not be read again "
                f"({_e(exc)}).</p></section>")


def prediction_section(task: Any, run: Any, heading: str,
                       title: str = "<h2>Confusion matrix on the validation set</h2>") -> str:
    """``run``'s model on ``task``'s validation examples, measured now: a classifier's confusion matrix, a
    regressor's predicted against true values; a language model's answers next to the expected ones."""
    if run.task.predicts_text:
        return _answers_section(task, run, heading)
    if not run.classes:
        return _regression_section(task, run, heading)
    matrix, classes, note = _validation_confusion(task, run)
    return (f"<section>{title}"
            + _figure(_confusion_figure(matrix, classes, heading), "confusion matrix heatmap",
                      f"Rows: true class, columns: predicted; numbers are counts. {_e(note)}")
            + "</section>")


def _seed_figure(groups: list[SeedGroup], best: dict[str, Any] | None, metric: str) -> Figure:
    figure = Figure(figsize=(max(4.5, 1.6 * len(groups) + 2.5), 3.6), layout="constrained")
    axes = figure.add_subplot()
    for x, group in enumerate(groups):
        wins = best is not None and any(t["number"] == best["number"] for t in group.trials)
        color = BEST_COLOR if wins else TRIAL_COLORS[0]
        # Seeds that reached the same value share one dot and one label, so labels never overprint.
        points: dict[tuple[float, str], list[str]] = {}
        for t in (t for t in group.trials if t["value"] is not None):
            points.setdefault((round(t["value"], 6), t["status"]), []).append(str(t["recipe"].get("seed")))
        for (value, status), seeds in points.items():
            counted = status == "completed"  # a pruned re-run stopped early: drawn hollow, not in the mean
            axes.scatter([x], [value], s=30, zorder=2, alpha=0.7, color=color if counted else "none",
                         edgecolors=color)
            label = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}" + ("" if counted else f" ({status})")
            axes.annotate(_plot_text(label), (x, value), xytext=(8, 0), textcoords="offset points", va="center",
                          fontsize=7, color="#555")
        if group.mean is not None:
            axes.errorbar([x - 0.15], [group.mean], yerr=[[group.half_width or 0]] * 2, fmt="D", color=color,
                          capsize=4, markersize=6, zorder=3)
    axes.set_xticks(range(len(groups)), [f"recipe of trial {g.original}" for g in groups], fontsize=9)
    axes.set_xlim(-0.6, len(groups) - 0.4)
    axes.set_ylabel(_objective_name(metric))
    axes.set_title("values over seeds; diamond: mean ± 95% half-width", fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    return figure


def seed_check_section(study: StudyRecord) -> str:
    """Whether the winner's lead survives other seeds: the spread over seeds is the noise every gap in
    the trials table should be compared with."""
    groups = seed_groups(study.trials)
    title = "<h2>Seed check</h2>"
    if not groups:
        return (f"<section>{title}<p>The seed check was not run: no trial re-ran a recipe with another seed, so the "
                "gaps between trials above include seed noise of unknown size.</p></section>")
    rows = []
    for group in groups:
        mean = "—" if group.mean is None else f"<b>{group.mean:.4f}</b>"
        if group.half_width is not None:
            mean += f" ± {group.half_width:.4f}"
        runs = "<br>".join(f"trial {t['number']}, seed {_e(t['recipe'].get('seed'))}: {_value(t['value'])}"
                           + ("" if scored(t) else f" ({_e(t['status'])}, not counted)") for t in group.trials)
        rows.append([f"trial {group.original}", runs, mean,
                     f"{min(group.values):.4f} – {max(group.values):.4f}" if group.values else "—",
                     str(len(group.values))])
    header = ["recipe of", f"runs: {_e(_objective_name(study.metric))}", "mean ± half-width", "min – max", "n"]
    return (f'<section>{title}<p class="verdict">{_e(seed_verdict(groups).capitalize())}.</p>'
            '<p class="note">The top recipes of the search re-run with more seeds, grouped by recipe (the original '
            "trial included); the half-width is that of the 95% Student-t interval of the mean. The best model is "
            "the best run of the recipe with the best mean.</p>"
            + _table(header, rows)
            + _figure(_seed_figure(groups, study.best, study.metric), "values over seeds per recipe",
                      "Each dot is one seed (hollow: stopped early, not counted); the diamond and bar are the "
                      "mean and its 95% interval; red is the recipe of the best model.")
            + "</section>")


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
.timeline li.seed { border-left-style: dashed; } tr.seed td { color: #666; font-style: italic; }
.verdict { font-size: 16px; font-weight: 600; }
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
