"""Resume a run from its newest checkpoint that carries the training state (``train.save_state``).

    python run.py --resume RUN_DIR            # or train.resume=RUN_DIR, or =RUN_DIR/checkpoints/NAME

The run goes on in its own folder with its own config (``RUN_DIR/config.yaml``); overrides on the
command line must agree with it (``RESUME_FREE`` may differ). What the killed run wrote after the
checkpoint's step is dropped before training goes on: metrics.jsonl rows and sample-index rows of
later steps, later checkpoints, and best/ goes back to the best checkpoint so far; so the finished
folder is the one an uninterrupted run writes. W&B gets the same run (its id is in run.json); W&B
keeps the steps it already had, which a resumed run logs again with the same values (perf/* aside).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from sdexp.atomic import atomic_write_bytes
from sdexp.errors import ConfigError, UserError
from sdexp.training_state import is_complete

# Keys a resumed run may change: they do not change what it computes.
RESUME_FREE = ("train.max_minutes", "logger.mode", "train.resume")
_STEP = re.compile(r"step-(\d+)$")


def checkpoint_step(checkpoint: Path) -> int:
    """The step a checkpoint folder holds (``final``: after every numbered one)."""
    match = _STEP.match(Path(checkpoint).name)
    return int(match.group(1)) if match else 1 << 62


def find_resume_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(run folder, checkpoint) for ``path``: a run folder (its newest complete state) or one of
    its checkpoint folders (which must hold a complete state)."""
    path = Path(path).expanduser().resolve()
    if path.parent.name == "checkpoints":
        run_dir, candidates = path.parent.parent, [path]
    else:
        run_dir = path
        folder = run_dir / "checkpoints"
        candidates = sorted(
            (p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else [],
            key=checkpoint_step,
        )
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"train.resume: {run_dir} is not a run folder (no config.yaml); pass a run's folder")
    complete = [c for c in candidates if is_complete(c)]
    if not complete:
        where = path if path != run_dir else f"{run_dir}/checkpoints"
        raise UserError(
            f"train.resume: {where} holds no checkpoint with the training state; only runs with "
            "train.save_state=true can resume (from their first checkpoint on)"
        )
    return run_dir, complete[-1]


def _differences(saved, new, prefix: str = "") -> list[tuple[str, object, object]]:
    if isinstance(saved, dict) and isinstance(new, dict):
        out = []
        for key in dict.fromkeys([*saved, *new]):
            out += _differences(saved.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == new else [(prefix.rstrip("."), saved, new)]


def config_differences(saved: dict, new: dict, free=RESUME_FREE) -> list[tuple[str, object, object]]:
    """(key, saved value, new value) for every key two plain run configs disagree on, but ``free``."""
    return [d for d in _differences(saved, new) if d[0] not in free]


def disagreement(key: str, saved, new, run_dir: Path) -> ConfigError:
    return ConfigError(
        f"{key}: the run was trained with {saved!r}, not {new!r}; a resumed run keeps the config it "
        f"started with ({run_dir / 'config.yaml'}); drop the override or start a new run"
    )


def resumed_config(run_dir: Path, overrides: list[str] = ()):
    """The run's saved config, with ``overrides`` checked against it (only ``RESUME_FREE`` keys
    may change)."""
    from omegaconf import OmegaConf

    from sdexp.config import as_plain_dict, to_run_config

    saved = OmegaConf.load(run_dir / "config.yaml")
    base = as_plain_dict(to_run_config(saved))
    dotted = []
    for item in overrides:
        key, sep, value = item.lstrip("+~").partition("=")
        if not sep:
            raise ConfigError(f"{item}: expected key=value")
        if key.startswith("hydra.") or key == "train.resume":
            continue
        if "." in key:
            dotted.append(f"{key}={value}")
            continue
        saved_name = (base.get(key) or {}).get("name") if isinstance(base.get(key), dict) else None
        if saved_name is None or str(saved_name) != value:  # a config group (model=…, method=…)
            raise disagreement(key, saved_name, value, run_dir)
    merged = OmegaConf.merge(saved, OmegaConf.from_dotlist(dotted)) if dotted else saved
    cfg = to_run_config(merged)
    for key, old, new in config_differences(base, as_plain_dict(cfg)):
        raise disagreement(key, old, new, run_dir)
    cfg.train.resume = None
    return cfg


def _keep_rows(path: Path, step: int) -> None:
    """Rewrite a JSON-lines file without rows of later steps (and without a torn last line)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(row.get("step", 0)) <= step:
            kept.append(line + "\n")
    atomic_write_bytes(path, "".join(kept).encode("utf-8"))


def rewind_run_folder(run_dir: Path, checkpoint: Path) -> None:
    """Drop what the killed run wrote after ``checkpoint``'s step (see the module docstring)."""
    step = checkpoint_step(checkpoint)
    _keep_rows(run_dir / "metrics.jsonl", step)
    for index in (run_dir / "samples").glob("*/index.jsonl"):
        _keep_rows(index, step)
    for other in (run_dir / "checkpoints").iterdir():
        later = other.name.startswith(".") or checkpoint_step(other) > step
        if other.is_dir() and later and other != checkpoint:
            shutil.rmtree(other)


def resume_run(path: str | Path, overrides: list[str] = (), *, notify=print, callbacks=()):
    """Continue the run at ``path`` (a run folder or a checkpoint folder) to its end."""
    from sdexp.run import train_run

    run_dir, checkpoint = find_resume_checkpoint(path)
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    if run.get("status") == "finished" and checkpoint.name == "final":
        raise UserError(f"train.resume: {run_dir} finished already (status finished in run.json)")
    cfg = resumed_config(run_dir, overrides)
    notify(f"resuming {run_dir} from {checkpoint.name}")
    rewind_run_folder(run_dir, checkpoint)
    return train_run(cfg, run_dir, notify=notify, callbacks=callbacks, resume_from=checkpoint)


def split_resume_argv(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the path of ``--resume PATH``/``--resume=PATH``/``train.resume=PATH``, the other arguments)."""
    path, rest, args = None, [], list(argv)
    while args:
        item = args.pop(0)
        if item == "--resume":
            if not args:
                raise UserError("--resume: give the run folder, e.g. --resume runs/2026-01-01_12-00-00")
            path = args.pop(0)
        elif item.startswith("--resume="):
            path = item.split("=", 1)[1]
        elif item.lstrip("+").startswith("train.resume=") and item.split("=", 1)[1] not in ("", "null"):
            path = item.split("=", 1)[1]
        else:
            rest.append(item)
    return path, rest


def main(argv: list[str]) -> bool:
    """run.py's resume, when ``argv`` asks for one (else False): exit 2 with one line when there is
    nothing to resume or the config disagrees."""
    from sdexp.errors import report_and_exit

    try:
        path, overrides = split_resume_argv(argv)
        if path is None:
            return False
        result = resume_run(path, overrides)
    except UserError as err:
        report_and_exit(err)
        return True
    print(f"run folder:  {result.run_dir}")
    print(f"steps: {result.steps} ({result.stop_reason}); wall time {result.wall_seconds:.1f}s")
    return True
