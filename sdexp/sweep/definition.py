"""Sweep definitions (`sweeps/NAME.yaml`): the base run, the search space, sampler, pruner, budget.

    name: lr_rank_grid
    overrides: [model=tiny_shapes, eval=shapes, train.steps=150, train.checkpoint_every=50]
    space:
      train.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
      method.rank: {type: categorical, choices: [4, 8, 16]}
      train.steps: {type: int, low: 100, high: 400, step: 50}
    sampler: {name: tpe, seed: 0}          # grid | random | tpe | qmc | nsga2 (+ their Optuna options)
    pruner: {name: median}                 # none | median | percentile | hyperband | successive_halving
    n_trials: 12
    timeout_minutes: null

Any run-config key can be searched. Everything is checked when the sweep starts: the YAML keys, the
parameter ranges, and that the base config composes with every parameter at its bounds, so a typo
fails in seconds with the key named, not in trial 7.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdexp.errors import ConfigError, UserError

SAMPLERS = ("grid", "random", "tpe", "qmc", "nsga2")
PRUNERS = ("none", "median", "percentile", "hyperband", "successive_halving")
PARAM_TYPES = ("float", "int", "categorical")
TOP_KEYS = {"name", "overrides", "space", "sampler", "pruner", "n_trials", "timeout_minutes", "objectives",
            "max_failures", "heartbeat_seconds"}  # fmt: skip


@dataclass
class ParamSpec:
    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None

    def suggest(self, trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.type == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)

    def bounds(self) -> list:
        """Values that exercise the whole range (composed at the door)."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


@dataclass
class SweepDefinition:
    name: str
    overrides: list[str]
    space: dict[str, ParamSpec]
    sampler: dict = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict = field(default_factory=lambda: {"name": "none"})
    n_trials: int | None = None  # None: grid size for grid, else required
    timeout_minutes: float | None = None
    objectives: list[str] | None = None  # names from the run's eval.objectives; None = all of them
    max_failures: int | None = None  # stop after this many failed trials in one invocation (None = n_trials)
    heartbeat_seconds: int = 30  # RDB storages: a trial silent for 4× this is failed and retried

    @property
    def sampler_name(self) -> str:
        return self.sampler["name"]

    def grid(self) -> list[dict]:
        """Every combination of the (categorical) parameters, in a fixed order."""
        keys = list(self.space)
        return [
            dict(zip(keys, values)) for values in itertools.product(*(self.space[k].choices for k in keys))
        ]


def _param(key: str, raw: Any, where: str) -> ParamSpec:
    if isinstance(raw, list):  # shorthand: a list of values is a categorical parameter
        raw = {"type": "categorical", "choices": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: give {{type: float|int|categorical, ...}} or a list of values")
    unknown = set(raw) - {"type", "low", "high", "log", "step", "choices", "values"}
    if unknown:
        raise ConfigError(
            f"{where}.{sorted(unknown)[0]}: unknown field (use type, low, high, log, step, choices)"
        )
    kind = raw.get("type", "categorical" if ("choices" in raw or "values" in raw) else None)
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}.type: {kind!r} is not one of {', '.join(PARAM_TYPES)}")
    choices = raw.get("choices", raw.get("values"))
    if choices is not None:
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: give a non-empty list")
        return ParamSpec(key, "categorical", choices=list(choices))
    if kind == "categorical":
        raise ConfigError(f"{where}.choices: a categorical parameter needs choices")
    low, high = raw.get("low"), raw.get("high")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or low >= high:
        raise ConfigError(f"{where}: needs numbers low < high (got low={low!r}, high={high!r})")
    log = bool(raw.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{where}.low: a log-scale range must be above 0 (got {low})")
    step = raw.get("step")
    if step is not None and log:
        raise ConfigError(f"{where}.step: Optuna cannot combine step and log; drop one")
    return ParamSpec(key, kind, float(low) if kind == "float" else int(low),
                     float(high) if kind == "float" else int(high), log, step)  # fmt: skip


def parse_definition(raw: dict, source: str = "sweep") -> SweepDefinition:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a sweep definition is a YAML mapping")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ConfigError(
            f"{source}: {sorted(unknown)[0]}: unknown key (valid: {', '.join(sorted(TOP_KEYS))})"
        )
    name = raw.get("name") or Path(source).stem
    space_raw = raw.get("space") or {}
    if not isinstance(space_raw, dict) or not space_raw:
        raise ConfigError(
            f"{source}: space: give at least one parameter, e.g. train.lr: {{type: float, low: 1e-5, high: 1e-3, log: true}}"
        )
    space = {str(k): _param(str(k), v, f"space.{k}") for k, v in space_raw.items()}
    sampler = raw.get("sampler") or {"name": "tpe"}
    sampler = {"name": sampler} if isinstance(sampler, str) else dict(sampler)
    if sampler.get("name") not in SAMPLERS:
        raise ConfigError(f"sampler.name: {sampler.get('name')!r} is not one of {', '.join(SAMPLERS)}")
    pruner = raw.get("pruner") or {"name": "none"}
    pruner = {"name": pruner} if isinstance(pruner, str) else dict(pruner)
    if pruner.get("name") not in PRUNERS:
        raise ConfigError(f"pruner.name: {pruner.get('name')!r} is not one of {', '.join(PRUNERS)}")
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError("overrides: give a list of key=value strings (Hydra overrides of the run config)")
    clash = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in space]
    if clash:
        raise ConfigError(f"overrides: {clash[0]} sets a key the space searches; drop one of them")
    definition = SweepDefinition(
        name=str(name),
        overrides=list(overrides),
        space=space,
        sampler=sampler,
        pruner=pruner,
        n_trials=raw.get("n_trials"),
        timeout_minutes=raw.get("timeout_minutes"),
        objectives=raw.get("objectives"),
        max_failures=raw.get("max_failures"),
        heartbeat_seconds=int(raw.get("heartbeat_seconds", 30)),
    )
    if definition.sampler_name == "grid":
        continuous = [k for k, p in space.items() if p.type != "categorical"]
        if continuous:
            raise ConfigError(
                f"space.{continuous[0]}: a grid needs a list of values (choices: [...]), not a range"
            )
        size = len(definition.grid())
        if definition.n_trials not in (None, size):
            raise ConfigError(f"n_trials: the grid has {size} points; leave n_trials out or set it to {size}")
        definition.n_trials = size
    if not isinstance(definition.n_trials, int) or definition.n_trials < 1:
        raise ConfigError(
            f"n_trials: give how many trials to run (an integer >= 1, got {definition.n_trials!r})"
        )
    if definition.timeout_minutes is not None and definition.timeout_minutes <= 0:
        raise ConfigError("timeout_minutes: must be > 0 (or null for no limit)")
    if definition.heartbeat_seconds < 1:
        raise ConfigError("heartbeat_seconds: must be >= 1")
    return definition


def load_definition(path: str | Path) -> SweepDefinition:
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"sweep definition {path} does not exist; see sweeps/ for ready ones")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return parse_definition(raw, str(path))


def format_value(value: Any) -> str:
    """A sampled value as a Hydra override value (floats in full precision)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "null"
    return str(value)


def trial_overrides(definition: SweepDefinition, params: dict) -> list[str]:
    return [*definition.overrides, *(f"{k}={format_value(v)}" for k, v in params.items())]


def check_composes(definition: SweepDefinition, extra: list[str]):
    """Compose the base run (definition overrides, then the command line's ``extra``) with every
    parameter at each of its bounds; return the run config at the first bounds."""
    from sdexp.entry import compose_run_config

    def compose(params: dict):
        return compose_run_config(
            [*definition.overrides, *extra, *(f"{k}={format_value(v)}" for k, v in params.items())]
        )

    first = {k: p.bounds()[0] for k, p in definition.space.items()}
    for key, spec in definition.space.items():
        for value in spec.bounds():
            try:
                compose({**first, key: value})
            except ConfigError as err:
                raise ConfigError(f"space.{key}={format_value(value)}: {err}") from None
    return compose(first)
