"""Stop when a monitored value has not improved for ``patience`` checks (Lightning's semantics).

A ``val/*`` monitor is checked at every validation; any other (``eval/*``, ``objective/*``) at every
scored checkpoint. Like Lightning's strict mode, a monitor that is not logged is an error.
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

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self.wait = state["best"], state["best_step"], state["wait"]

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    @property
    def on_validation(self) -> bool:
        return self.monitor.startswith("val/")

    def on_validation_end(self, trainer, module, metrics: dict) -> None:
        if self.on_validation:
            self._check(trainer, metrics, "validation")

    def on_checkpoint_scored(self, trainer, module, metrics: dict) -> None:
        if not self.on_validation:
            self._check(trainer, metrics, "scored checkpoint")

    def _check(self, trainer, metrics: dict, source: str) -> None:
        if self.monitor not in metrics:
            raise ConfigError(
                f"train.early_stopping.monitor: {self.monitor!r} is not among the {source} metrics "
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
                f"for {self.wait} {'validations' if self.on_validation else 'scored checkpoints'}"
            )
