"""A rich progress bar: step/total, smoothed loss, it/s, ETA (quiet when not a terminal)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sdexp.callbacks.base import Callback


class ProgressBar(Callback):
    def __init__(self, smoothing: float = 0.9, console: Console | None = None):
        self.smoothing = smoothing
        self.console = console or Console(stderr=True)
        self.loss: float | None = None
        self.progress: Progress | None = None
        self.task = None

    def on_train_start(self, trainer, module) -> None:
        if not trainer.is_main_process:
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} it/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            disable=not self.console.is_terminal,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=trainer.max_steps, loss="-", speed="-")

    def on_train_step_end(self, trainer, module, logs: dict) -> None:
        if self.progress is None:
            return
        loss = logs.get("train/loss")
        if loss is not None:
            self.loss = (
                loss if self.loss is None else self.smoothing * self.loss + (1 - self.smoothing) * loss
            )
        task = self.progress.tasks[0]
        speed = task.speed
        self.progress.update(
            self.task,
            completed=trainer.state.step,
            loss=f"{self.loss:.4f}" if self.loss is not None else "-",
            speed=f"{speed:.2f}" if speed else "-",
        )

    def on_train_end(self, trainer, module) -> None:
        if self.progress is not None:
            self.progress.stop()
