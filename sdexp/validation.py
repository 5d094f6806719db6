"""Range and choice checks shared by every typed config section (runs, evaluation, pretraining).

Each raises ``ConfigError`` naming the key, so a bad value is one line and exit code 2.
"""

from __future__ import annotations

from typing import Any

from sdexp.errors import ConfigError


def choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")


def positive(name: str, value: float | int | None, *, allow_zero: bool = False, optional=False) -> None:
    if value is None and optional:
        return
    if value is None or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}: must be {bound} (got {value})")
