"""Terminal output: live progress bars on stderr (so stdout stays clean for --json), and result tables."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from tuneloop.training.loop import Callback, EpochRecord, TrainResult

stderr = Console(stderr=True, soft_wrap=True)
stdout = Console(soft_wrap=True)


class ProgressDisplay(Callback):
    """One bar per epoch with the running training loss and samples/s; a line per finished epoch."""

    def __init__(self, console: Console = stderr):
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self.epochs = 0
        self.steps_per_epoch = 0

    def on_train_start(self, total_steps: int, num_examples: int, epochs: int) -> None:
        self.epochs, self.steps_per_epoch = epochs, total_steps // epochs
        self.console.print(f"Training on {num_examples} examples for up to {epochs} epochs "
                           f"({self.steps_per_epoch} steps each)")
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, transient=True)
        self.progress.start()

    def on_step(self, epoch: int, step: int, loss: float, samples_per_s: float) -> None:
        assert self.progress is not None
        if self.task is None or step == 1:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"epoch {epoch}/{self.epochs}", total=self.steps_per_epoch,
                                               status="")
        self.progress.update(self.task, completed=step, status=f"loss {loss:.4f}  {samples_per_s:.1f} samples/s")

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None:
        assert self.progress is not None
        self.progress.console.print(
            f"epoch {record.epoch}: train loss {record.train_loss:.4f} | val loss {record.val_loss:.4f} "
            f"{epoch_scores(record)} | "
            f"{record.train_samples_per_s:.1f} samples/s, {record.seconds:.1f}s{'  * best' if is_best else ''}")

    def on_train_end(self, result: TrainResult) -> None:
        if self.progress is not None:
            self.progress.stop()
        if result.stopped_early:
            self.console.print(f"Stopped early: no gain for the patience window after epoch {result.best_epoch}.")


def epoch_scores(record: EpochRecord) -> str:
    if not math.isfinite(record.val_loss):
        return "(no validation: every labelled example trains)"
    if record.val_accuracy is None and record.val_rmse is None:  # a language model: its loss is its score
        return f"perplexity {math.exp(min(record.val_loss, 50)):.4g}"
    if record.val_mase is not None:
        return f"MASE {record.val_mase:.4f} sMAPE {record.val_smape:.2f}% MAE {record.val_mae:.4g}"
    if record.val_rmse is not None:
        return f"RMSE {record.val_rmse:.4g} MAE {record.val_mae:.4g} R² {record.val_r2:.4f}"
    return f"accuracy {record.val_accuracy:.4f} macro-F1 {record.val_macro_f1:.4f}"


def confusion_table(matrix: np.ndarray, classes: Sequence[str]) -> Table:
    table = Table(title="Confusion matrix (rows: true, columns: predicted)")
    table.add_column("true \\ predicted")
    for name in classes:
        table.add_column(name, justify="right")
    for i, (name, row) in enumerate(zip(classes, matrix, strict=True)):
        table.add_row(name, *(f"[bold]{v}[/]" if i == j else (str(v) if v else "·") for j, v in enumerate(row)))
    return table


class StudyDisplay:
    """A line per trial as it starts and ends: what changed and why, the result, the diagnosis."""

    def __init__(self, console: Console = stderr, show_epochs: bool = True):
        self.console = console
        self.show_epochs = show_epochs

    def training_callbacks(self) -> list[Callback]:
        return [ProgressDisplay(self.console)] if self.show_epochs else []

    def on_trial_start(self, number: int, recipe, reason: str) -> None:
        depth = recipe.trainable_layers
        self.console.rule(f"trial {number}")
        self.console.print(f"[bold]why:[/] {reason}")
        self.console.print(f"recipe: trainable_layers={depth} lr={recipe.learning_rate:g} epochs={recipe.epochs} "
                           f"batch={recipe.batch_size} weight_decay={recipe.weight_decay:g} "
                           f"dropout={recipe.dropout:g} label_smoothing={recipe.label_smoothing:g}")

    def on_trial_end(self, trial, best) -> None:
        value = "" if trial.value is None else f"{trial.value:.4f}"
        diagnosis = trial.diagnosis.summary if trial.diagnosis else ""
        self.console.print(f"trial {trial.number}: {trial.status} {value} in {trial.seconds:.0f}s; {diagnosis}")
        if trial.no_effect:
            self.console.print(f"[yellow]{trial.no_effect}[/]: not counted as a step of the search")
        if best is not None:
            self.console.print(f"best so far: trial {best.number} ({best.value:.4f}), run {best.run_id}")


def trials_table(result: dict) -> Table:
    table = Table(title=f"Study {result['study']}: {result['stop_reason']}")
    for name in ("#", "status", "value", "depth", "lr", "epochs", "diagnosis", "time"):
        table.add_column(name, justify="right" if name in ("#", "value", "lr", "epochs", "time") else "left")
    for t in result["trials"]:
        r = t["recipe"]
        mark = " *" if t["run"] == result["best_run"] else ""
        status = "no effect" if t.get("no_effect") else t["status"]
        table.add_row(str(t["number"]) + mark, status, "" if t["value"] is None else f"{t['value']:.4f}",
                      str(r["trainable_layers"]), f"{r['learning_rate']:g}", str(r["epochs"]),
                      t["diagnosis"] or "", f"{t['seconds']:.0f}s")
    return table
