"""Terminal output: live progress bars on stderr (so stdout stays clean for --json), and result tables."""

from __future__ import annotations

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
            f"accuracy {record.val_accuracy:.4f} macro-F1 {record.val_macro_f1:.4f} | "
            f"{record.train_samples_per_s:.1f} samples/s, {record.seconds:.1f}s{'  * best' if is_best else ''}")

    def on_train_end(self, result: TrainResult) -> None:
        if self.progress is not None:
            self.progress.stop()
        if result.stopped_early:
            self.console.print(f"Stopped early: no gain for the patience window after epoch {result.best_epoch}.")


def confusion_table(matrix: np.ndarray, classes: Sequence[str]) -> Table:
    table = Table(title="Confusion matrix (rows: true, columns: predicted)")
    table.add_column("true \\ predicted")
    for name in classes:
        table.add_column(name, justify="right")
    for i, (name, row) in enumerate(zip(classes, matrix, strict=True)):
        table.add_row(name, *(f"[bold]{v}[/]" if i == j else (str(v) if v else "·") for j, v in enumerate(row)))
    return table
