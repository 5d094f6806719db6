"""Stop training when a wall-clock budget is spent (``train.max_minutes``).

A budget in minutes is how GPU leases, CI and sweeps are sized; the trainer still validates and
writes its final checkpoint after the stop, so a timed-out run is a complete run.
"""

from __future__ import annotations

import time

from sdexp.callbacks.base import Callback


class TimeLimit(Callback):
    def __init__(self, max_minutes: float):
        self.max_seconds = max_minutes * 60.0
        self.started: float | None = None
        self.spent_before = 0.0  # seconds a resumed run had spent before it was stopped

    def on_train_start(self, trainer, module) -> None:
        self.started = time.perf_counter() - self.spent_before

    def state_dict(self) -> dict:
        return {"spent": time.perf_counter() - self.started if self.started is not None else 0.0}

    def load_state_dict(self, state: dict) -> None:
        self.spent_before = float(state["spent"])

    def on_train_step_end(self, trainer, module, logs: dict) -> None:
        if self.started is None or trainer.should_stop:
            return
        if time.perf_counter() - self.started >= self.max_seconds:
            trainer.should_stop = True
            trainer.state.stop_reason = f"time_limit: {self.max_seconds / 60:g} minutes spent"
