"""The axes of a grid: a name and values, each value a label and an edit of the GenerationSpec.

One mechanism for every kind of grid: prompts × checkpoints is ``Axis("prompt", …)`` by
``Axis("checkpoint", …)``; ``--x KEY=V1,V2`` builds the same objects. A ``checkpoint`` value needs a
run folder and a ``trial`` value a sweep folder (``sources.Target``); the others stand alone.
Values are split on commas, prompts and negative prompts on ``|`` (prompts hold commas).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sdexp.errors import UserError
from sdexp.grid.sources import (
    Target,
    best_checkpoint_name,
    checkpoint_edit,
    read_config,
    run_checkpoints,
    spec_from_config,
    trial_best_folder,
)
from sdexp.grid.spec import GenerationSpec
from sdexp.samplers import SAMPLERS

ALL = "all"


@dataclass(frozen=True)
class AxisValue:
    label: str  # what the grid prints beside the row or above the column
    edit: tuple[tuple[str, object], ...]  # (GenerationSpec field, value) pairs

    def apply(self, spec: GenerationSpec) -> GenerationSpec:
        return spec.edited(dict(self.edit))


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[AxisValue, ...]

    @property
    def labels(self) -> list[str]:
        return [v.label for v in self.values]


def _where(flag: str, key: str) -> str:
    """How an error names the axis: ``--x seed`` for a generic axis, ``--scales`` for a shortcut."""
    return f"{flag} {key}" if flag in ("--x", "--y") else flag


def _value(label: str, **edit) -> AxisValue:
    return AxisValue(label, tuple(edit.items()))


def _number(key: str, raw: str, flag: str, kind: type, low: float | None = None):
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or (low is not None and value < low):
        bound = f" of at least {low:g}" if low is not None else ""
        raise UserError(
            f"{_where(flag, key)}: {raw!r} is not {'an integer' if kind is int else 'a number'}{bound}"
        )
    return value


def _size(raw: str, flag: str) -> tuple[int, int]:
    parts = raw.lower().split("x")
    try:
        width, height = int(parts[0]), int(parts[-1])
    except ValueError:
        width = height = 0
    if len(parts) > 2 or min(width, height) < 8 or width % 8 or height % 8:
        raise UserError(
            f"{_where(flag, 'size')}: {raw!r} is not SIDE or WIDTHxHEIGHT in positive multiples of 8 (e.g. 512x768)"
        )
    return width, height


def _plain(key: str, raw: list[str], flag: str) -> list[AxisValue]:
    """Values of the keys that need nothing but themselves."""
    if key in ("prompt", "negative"):
        return [_value(v, **{key: v}) for v in raw]
    if key == "seed":
        return [_value(f"seed {v}", seed=_number(key, v, flag, int, 0)) for v in raw]
    if key == "steps":
        return [_value(f"{v} steps", steps=_number(key, v, flag, int, 1)) for v in raw]
    if key == "guidance":
        return [_value(f"CFG {v}", guidance=_number(key, v, flag, float, 0)) for v in raw]
    if key == "scale":
        return [_value(f"scale {v}", scale=_number(key, v, flag, float)) for v in raw]
    if key == "scheduler":
        for v in raw:
            if v not in SAMPLERS:
                raise UserError(
                    f"{_where(flag, 'scheduler')}: unknown scheduler {v!r}; choose from {', '.join(SAMPLERS)}"
                )
        return [_value(v, scheduler=v) for v in raw]
    width_height = [_size(v, flag) for v in raw]  # size
    return [_value(f"{w}x{h}", width=w, height=h) for w, h in width_height]


def _checkpoints(raw: list[str], target: Target, flag: str) -> list[AxisValue]:
    if target.run_dir is None:
        raise UserError(
            f"{_where(flag, 'checkpoint')}: {target.path} is not a run folder; checkpoints are a run's "
            "(use trial=... for a sweep, scale=... for a LoRA file)"
        )
    run_dir = target.run_dir
    available = run_checkpoints(run_dir)
    names = [n for name in (raw or [ALL]) for n in (available if name == ALL else [name])]
    values = []
    for name in names:
        if name == "base":
            values.append(_value("base", model=target.base_model, lora=None, embedding=None))
            continue
        folder = run_dir / "best" if name == "best" else run_dir / "checkpoints" / name
        if not folder.is_dir():
            raise UserError(
                f"{_where(flag, 'checkpoint')}: {name!r} is not in {run_dir / 'checkpoints'} "
                f"(there: {', '.join(available)}, best, base; or all)"
            )
        label = f"best ({best_checkpoint_name(run_dir) or '?'})" if name == "best" else name
        values.append(AxisValue(label, tuple(checkpoint_edit(folder, target.base_model).items())))
    return values


def _trials(raw: list[str], target: Target, flag: str) -> list[AxisValue]:
    from sdexp.sweep.best import best_trials, complete_trials, trial_run_dir
    from sdexp.sweep.layout import load_study

    if target.sweep_dir is None:
        raise UserError(
            f"{_where(flag, 'trial')}: {target.path} is not a sweep folder (no sweep.json); trials are a sweep's"
        )
    info, study = load_study(target.sweep_dir)
    complete = {t.number: t for t in complete_trials(study)}
    best = [t.number for t in best_trials(info, study)]
    numbers = []
    for value in raw or [ALL]:
        if value in (ALL, "best"):
            numbers += sorted(complete) if value == ALL else best
        else:
            numbers.append(_number("trial", value, flag, int, 0))
    missing = [n for n in numbers if n not in complete]
    if missing:
        raise UserError(
            f"{_where(flag, 'trial')}: trial {missing[0]} is not a COMPLETE trial of {target.sweep_dir} "
            f"(complete: {', '.join(map(str, sorted(complete))) or 'none'}; or all, best)"
        )
    values = []
    for trial in (complete[n] for n in numbers):
        cfg = read_config(trial_run_dir(target.sweep_dir, trial))
        base = spec_from_config(cfg, target.model_override).model
        edit = checkpoint_edit(trial_best_folder(target.sweep_dir, trial), base)
        params = " ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in trial.params.items())
        values.append(AxisValue(f"trial {trial.number}\n{params}".strip(), tuple(edit.items())))
    return values


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


PLAIN_KEYS = ("prompt", "negative", "seed", "steps", "guidance", "scheduler", "scale", "size")
TARGET_KEYS: dict[str, Callable[[list[str], Target, str], list[AxisValue]]] = {
    "checkpoint": _checkpoints,
    "trial": _trials,
}
KEYS = (*PLAIN_KEYS, *TARGET_KEYS)


def split_values(key: str, text: str) -> list[str]:
    separator = "|" if key in ("prompt", "negative") else ","
    return [v.strip() for v in text.split(separator) if v.strip()]


def make_axis(key: str, raw: list[str], target: Target, flag: str = "--x") -> Axis:
    """The axis ``key`` over ``raw`` values (checkpoint/trial: [] or ["all"] means every one)."""
    if key not in KEYS:
        raise UserError(f"{flag}: unknown axis {key!r}; choose from {', '.join(KEYS)}")
    if key in TARGET_KEYS:
        values = TARGET_KEYS[key](raw, target, flag)
    elif not raw:
        raise UserError(f"{_where(flag, key)}: no values; give them as {key}=V1,V2")
    else:
        values = _plain(key, raw, flag)
    if not values:
        raise UserError(f"{_where(flag, key)}: nothing to show")
    return Axis(key, tuple(values))


def parse_axis(text: str, target: Target, flag: str = "--x") -> Axis:
    """``KEY=V1,V2,...`` (prompts: ``prompt=a cat|a dog``) as an Axis."""
    key, sep, values = text.partition("=")
    if not sep:
        raise UserError(f"{flag}: {text!r} is not KEY=V1,V2,... (keys: {', '.join(KEYS)})")
    key = key.strip()
    return make_axis(key, split_values(key, values), target, flag)
