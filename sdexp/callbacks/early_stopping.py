"""Stop when a monitored value has not improved for ``patience`` validations (Lightning's semantics).

Like Lightning's strict mode, a monitor that is not logged is an error, not a silent no-op.
"""

from __future__ import annotations

import math

from sdexp.callbacks.base import Callback
from sdexp.errors import ConfigError


class EarlyStopping(Callback):
    def __init__(
        self, monitor: str = "val/loss", mode: str = "min", patience: int = 3, min_delta: float = 0.0
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, got {mode!r}")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, abs(min_delta)
        self.best = math.inf if mode == "min" else -math.inf
        self.best_step: int | None = None
        self.wait = 0
        self.stopped_step: int | None = None

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_validation_end(self, trainer, module, metrics: dict) -> None:
        if self.monitor not in metrics:
            raise ConfigError(
                f"train.early_stopping.monitor: {self.monitor!r} is not among the validation metrics "
                f"({', '.join(sorted(metrics)) or 'none'}); monitor one of those"
            )
        value = float(metrics[self.monitor])
        if self._improved(value):
            self.best, self.best_step, self.wait = value, trainer.state.step, 0
            return
        self.wait += 1
        if self.wait >= self.patience and trainer.state.step > 0:
            trainer.should_stop = True
            self.stopped_step = trainer.state.step
            trainer.state.stop_reason = (
                f"early_stopping: {self.monitor} did not improve on {self.best:.6g} (step {self.best_step}) "
                f"for {self.wait} validations"
            )
