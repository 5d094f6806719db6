"""A run's hyperparameters and its best checkpoint's results, as the trackers compare runs by them.

W&B's parallel-coordinates panel and TensorBoard's HParams tab compare runs on flat keys, while the
run config is nested (``train.lr``). A sweep trial's hyperparameters are its sampled keys
(``logger.hparams``, set by the sweep runner); a plain run's are the usual suspects in
``LOGGED_HPARAMS``. The results are best.json's: the objectives and metrics of the best checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sdexp.errors import ConfigError

# A plain run's hyperparameters: the keys people tune first (those the run's config has).
LOGGED_HPARAMS = (
    "method.name",
    "train.lr",
    "method.rank",
    "method.adapter_type",
    "train.steps",
    "train.batch_size",
    "train.optimizer",
    "train.scheduler",
    "train.seed",
)
GENERIC_NAMES = frozenset({"name", "path", "dir", "type", "mode"})  # say nothing without their section
BEST_FILE = "best.json"  # written by sdexp.callbacks.scoring beside best/


def _lookup(config: dict, dotted: str) -> tuple[bool, Any]:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _plain(value: Any) -> Any:
    """A value both trackers take: numbers, strings and booleans as they are, anything else as JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def run_hparams(config: dict, keys: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """{dotted key: value}: ``keys`` (all must exist) or, when empty, the LOGGED_HPARAMS the config has."""
    found = {}
    for key in keys or LOGGED_HPARAMS:
        present, value = _lookup(config, key)
        if not present:
            if keys:
                raise ConfigError(
                    f"logger.hparams: {key!r} is not a config key; list dotted keys such as train.lr"
                )
            continue
        found[key] = _plain(value)
    return found


def short_names(hparams: dict[str, Any], reserved: set[str] = frozenset()) -> dict[str, Any]:
    """Top-level names for W&B's config: the last part of each key (``train.lr`` -> ``lr``) where
    that is unique, not a config section (``reserved``) and not a bare ``name``, else the dotted key
    as one flat key (``method.name``)."""
    last = [key.rsplit(".", 1)[-1] for key in hparams]
    names = {}
    for key, short in zip(hparams, last, strict=True):
        unique = last.count(short) == 1 and short not in reserved and short not in GENERIC_NAMES
        names[short if unique else key] = hparams[key]
    return names


def read_best(run_dir: Path | str) -> dict | None:
    """best.json of a run folder, or None when no checkpoint was scored (evaluation off, a pretrain stage)."""
    path = Path(run_dir) / BEST_FILE
    if not path.is_file():
        return None
    best = json.loads(path.read_text(encoding="utf-8"))
    return best if best.get("step") is not None else None


def best_results(best: dict | None) -> dict[str, float]:
    """best/objective/NAME, best/METRIC and best/step of a best.json, finite numbers only."""
    if not best:
        return {}
    values = {"best/step": best["step"]}
    values.update({f"best/objective/{k}": v for k, v in (best.get("objectives") or {}).items()})
    values.update(
        {f"best/{k}": v for k, v in (best.get("metrics") or {}).items() if not k.startswith("objective/")}
    )
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
