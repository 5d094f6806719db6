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
fails in seconds with the key named, not in trial 7. Numbers are read as YAML 1.2 reads them
(``1e-5`` is a float, not PyYAML's string), and a whole number written as a float (``1e3``) is an
int where an int is expected.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: Any, where: str) -> float | int:
    """A YAML number; a quoted one ('1e-5') is named as such, since quoting is the likely mistake."""
    if _is_number(value) and math.isfinite(value):
        return value
    hint = ""
    if isinstance(value, str):
        try:
            float(value)
            hint = ", a quoted string: drop the quotes"
        except ValueError:
            pass
    raise ConfigError(f"{where}: give a number (got {value!r}{hint})")


def _whole(value: Any, where: str) -> int:
    """An int, also when written as a float (``1e3``, ``100.0``): YAML 1.2 reads both as floats."""
    value = _number(value, where)
    if isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{where}: give a whole number (got {value!r})")
    return int(value)


def _int_if_whole(value: Any) -> Any:
    """``4.0`` -> ``4`` (an int config key refuses ``4.0``; a float key takes ``4``); else as is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _options(raw: dict) -> dict:
    """Sampler/pruner options with whole floats as ints (Hyperband's ``min_resource: 2e2``)."""
    return {k: _int_if_whole(v) for k, v in raw.items()}


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
        return ParamSpec(key, "categorical", choices=[_int_if_whole(c) for c in choices])
    if kind == "categorical":
        raise ConfigError(f"{where}.choices: a categorical parameter needs choices")
    low, high = _number(raw.get("low"), f"{where}.low"), _number(raw.get("high"), f"{where}.high")
    if kind == "int":
        low, high = _whole(low, f"{where}.low"), _whole(high, f"{where}.high")
    if low >= high:
        raise ConfigError(f"{where}: needs numbers low < high (got low={low!r}, high={high!r})")
    log = bool(raw.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{where}.low: a log-scale range must be above 0 (got {low})")
    step = raw.get("step")
    if step is not None:
        if log:
            raise ConfigError(f"{where}.step: Optuna cannot combine step and log; drop one")
        step = _whole(step, f"{where}.step") if kind == "int" else _number(step, f"{where}.step")
        if step <= 0:
            raise ConfigError(f"{where}.step: must be > 0 (got {step})")
    if kind == "float":
        low, high = float(low), float(high)
    return ParamSpec(key, kind, low, high, log, step)


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
    sampler = _options({"name": sampler} if isinstance(sampler, str) else dict(sampler))
    if sampler.get("name") not in SAMPLERS:
        raise ConfigError(f"sampler.name: {sampler.get('name')!r} is not one of {', '.join(SAMPLERS)}")
    pruner = raw.get("pruner") or {"name": "none"}
    pruner = _options({"name": pruner} if isinstance(pruner, str) else dict(pruner))
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
        n_trials=_optional(raw, "n_trials", _whole),
        timeout_minutes=_optional(raw, "timeout_minutes", _number),
        objectives=raw.get("objectives"),
        max_failures=_optional(raw, "max_failures", _whole),
        heartbeat_seconds=_whole(raw.get("heartbeat_seconds", 30), "heartbeat_seconds"),
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
    if definition.max_failures is not None and definition.max_failures < 1:
        raise ConfigError("max_failures: must be >= 1 (or null for the default; see docs/sweeps.md)")
    return definition


def _optional(raw: dict, key: str, convert):
    return None if raw.get(key) is None else convert(raw[key], key)


FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.2's floats: PyYAML (YAML 1.1) wants a dot and a signed exponent, so it reads `1e-5` as a string.
FLOAT_RE = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class SweepYamlLoader(yaml.SafeLoader):
    """SafeLoader whose floats follow YAML 1.2: `1e-5`, `1E-5`, `-3e2` are numbers, as people write them."""

    yaml_implicit_resolvers = {
        first: [(tag, FLOAT_RE if tag == FLOAT_TAG else regexp) for tag, regexp in resolvers]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def load_yaml(text: str) -> Any:
    """Parse a sweep definition's YAML (safe: plain data only)."""
    return yaml.load(text, Loader=SweepYamlLoader)


def load_definition(path: str | Path) -> SweepDefinition:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"sweep definition {path} does not exist; see sweeps/ for ready ones")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
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


def trial_overrides(definition: SweepDefinition, params: dict, extra: list[str] = ()) -> list[str]:
    """A trial's Hydra overrides: the definition's, then the command line's ``extra``, then the
    sampled values (which win, as the checks at the door composed them)."""
    return [*definition.overrides, *extra, *(f"{k}={format_value(v)}" for k, v in params.items())]


def check_composes(definition: SweepDefinition, extra: list[str]):
    """Compose the base run (definition overrides, then the command line's ``extra``) with every
    parameter at each of its bounds; return the run config at the first bounds."""
    from sdexp.entry import compose_run_config

    def compose(params: dict):
        return compose_run_config(trial_overrides(definition, params, extra))

    first = {k: p.bounds()[0] for k, p in definition.space.items()}
    for key, spec in definition.space.items():
        for value in spec.bounds():
            try:
                compose({**first, key: value})
            except ConfigError as err:
                raise ConfigError(f"space.{key}={format_value(value)}: {err}") from None
    return compose(first)
