"""Objectives: one number (or several, for multi-objective sweeps) per scored checkpoint.

An objective is a weighted sum of logged metrics with a direction and optional constraints
(``eval.objectives`` in the config). ``Score`` orders checkpoints: a feasible one beats any
infeasible one, feasible ones compare by value, infeasible ones by total violation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sdexp.errors import ConfigError


@dataclass(frozen=True)
class Score:
    name: str
    direction: str
    value: float
    violation: float  # 0 when every constraint holds

    @property
    def feasible(self) -> bool:
        return self.violation == 0.0

    def better_than(self, other: Score | None) -> bool:
        if other is None:
            return True
        if self.feasible != other.feasible:
            return self.feasible
        if not self.feasible:
            return self.violation < other.violation
        if self.direction == "maximize":
            return self.value > other.value
        return self.value < other.value

    def as_metrics(self) -> dict[str, float]:
        """What the loggers get: ``objective/<name>`` and, with constraints, how far it is off."""
        return {
            f"objective/{self.name}": self.value,
            f"objective/{self.name}/violation": self.violation,
        }


def _metric(metrics: dict, name: str, where: str) -> float:
    if name not in metrics:
        raise ConfigError(
            f"{where}: {name!r} was not measured at this checkpoint (measured: {', '.join(sorted(metrics))})"
        )
    value = float(metrics[name])
    if not math.isfinite(value):
        raise ValueError(f"{name} is {value}")
    return value


def score(objective, metrics: dict, index: int = 0) -> Score:
    """``objective`` (an ObjectiveConfig) evaluated on one checkpoint's metrics."""
    key = f"eval.objectives.{index}"
    value = sum(t.weight * _metric(metrics, t.metric, f"{key}.terms") for t in objective.terms)
    violation = 0.0
    for c in objective.constraints:
        v = _metric(metrics, c.metric, f"{key}.constraints")
        if c.min is not None and v < c.min:
            violation += c.min - v
        if c.max is not None and v > c.max:
            violation += v - c.max
    return Score(objective.name, objective.direction, float(value), float(violation))


def score_all(objectives, metrics: dict) -> list[Score]:
    return [score(o, metrics, i) for i, o in enumerate(objectives)]
