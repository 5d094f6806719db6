"""Forward step logs, validation metrics and throughput to the loggers (run folder, W&B)."""

from __future__ import annotations

import time

from sdexp.callbacks.base import Callback


class MetricsLogging(Callback):
    def __init__(self, logger, log_every: int = 1, samples_per_step: int = 1):
        self.logger = logger
        self.log_every = log_every
        self.samples_per_step = samples_per_step
        self._last_time: float | None = None
        self._last_step = 0

    def on_train_start(self, trainer, module) -> None:
        self._last_time, self._last_step = time.perf_counter(), trainer.state.step

    def on_train_step_end(self, trainer, module, logs: dict) -> None:
        step = trainer.state.step
        if step % self.log_every and step != trainer.max_steps:
            return
        now = time.perf_counter()
        elapsed = max(now - (self._last_time or now), 1e-9)
        steps = step - self._last_step
        self._last_time, self._last_step = now, step
        values = dict(logs)
        if steps > 0:
            values["perf/it_per_s"] = steps / elapsed
            values["perf/samples_per_s"] = steps * self.samples_per_step / elapsed
        self.logger.log_metrics(values, step=step)

    def on_validation_end(self, trainer, module, metrics: dict) -> None:
        if metrics:
            self.logger.log_metrics(dict(metrics), step=trainer.state.step)
        # validation time is not training throughput
        self._last_time = time.perf_counter()

    def on_checkpoint(self, trainer, module, path) -> None:
        self._last_time = time.perf_counter()  # nor is saving

    def on_checkpoint_scored(self, trainer, module, metrics: dict) -> None:
        self._last_time = time.perf_counter()  # nor is evaluation
