"""What a grid is drawn from: a run folder, a sweep folder, or a LoRA/embedding file on a named base.

Each gives the grid its starting GenerationSpec (the run config's model and sample settings, the
run's ``best/``), its default prompts, where grids go, and the cells a ``checkpoint`` or ``trial``
axis names (a checkpoint folder becomes the edit that loads it: a LoRA, an embedding, or a whole
fine-tuned model in place of the base).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sdexp.errors import UserError
from sdexp.grid.spec import GenerationSpec

GRIDS_DIR = "grids"


@dataclass
class Target:
    """The thing ``sdexp grid`` was pointed at, read once."""

    kind: str  # "run" | "checkpoint" (one of a run's) | "sweep" | "file"
    path: Path
    base: GenerationSpec  # every cell starts here
    base_model: str  # the base before any checkpoint replaced it (the ``base`` checkpoint value)
    prompts: list[str] = field(default_factory=list)  # used when --prompts is omitted
    grids_root: Path = Path(GRIDS_DIR)
    run_dir: Path | None = None
    sweep_dir: Path | None = None
    model_override: str | None = None  # --model: replaces the run's (every trial's) base


# ---- run folders -----------------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()


def read_config(run_dir: Path):
    """The run's composed config (config.yaml) as an OmegaConf node, read loosely: a grid needs a
    few keys, not a config that still validates (its data folder may be gone)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(run_dir / "config.yaml")
    except Exception as err:  # noqa: BLE001 - any parse error is the same user problem
        raise UserError(f"{run_dir / 'config.yaml'}: cannot be read ({err}); is it a run folder?") from None


def _get(cfg, key: str, default=None):
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key, default=default)
    return default if value is None else value


def spec_from_config(cfg, model: str | None = None) -> GenerationSpec:
    """The run's base and its sample settings (train.sample_*, the training resolution);
    ``model`` replaces the run's base (another copy of it, or another base to compare on)."""
    size = _get(cfg, "train.resolution") or _get(cfg, "model.resolution")
    return GenerationSpec(
        model=model or str(_get(cfg, "model.path") or _get(cfg, "model.name")),
        family="auto" if model else str(_get(cfg, "model.family", "auto")),
        vae=None if model else _get(cfg, "model.vae"),
        prediction_type=_get(cfg, "model.prediction_type"),
        zero_terminal_snr=bool(_get(cfg, "train.zero_terminal_snr", False)),
        steps=int(_get(cfg, "train.sample_steps", 20)),
        guidance=float(_get(cfg, "train.sample_guidance", 7.5)),
        scheduler=str(_get(cfg, "train.sample_scheduler", "dpmpp_2m")),
        width=size,
        height=size,
    )


def config_prompts(cfg) -> list[str]:
    """eval.prompts, else train.sample_prompts, else the instance prompt or data.prompt; ``{token}``
    written as the run's token."""
    prompts = list(_get(cfg, "eval.prompts", []) or _get(cfg, "train.sample_prompts", []) or [])
    if not prompts:
        prompts = [p for p in (_get(cfg, "method.instance_prompt"), _get(cfg, "data.prompt")) if p][:1]
    token = _get(cfg, "data.token") or _get(cfg, "method.token")
    return [p.replace("{token}", token) if token else p for p in map(str, prompts)]


def checkpoint_edit(folder: Path, base_model: str) -> dict:
    """The GenerationSpec edit that generates with a checkpoint folder: a full fine-tune's pipeline
    folder replaces the base; a textual-inversion embedding (with its LoRA, if pivotal tuning made
    one) or a LoRA goes on the base."""
    from sdexp.export.embedding_files import checkpoint_embedding
    from sdexp.inspect import find_lora_file

    if (folder / "model_index.json").is_file():
        return {"model": str(folder), "lora": None, "embedding": None}
    embedding, lora = checkpoint_embedding(folder), find_lora_file(folder)
    if embedding is None and lora is None:
        raise UserError(
            f"{folder}: holds no LoRA (lora.safetensors), embedding or model (model_index.json); "
            "is the checkpoint complete?"
        )
    return {
        "model": base_model,
        "lora": str(lora) if lora else None,
        "embedding": str(embedding) if embedding else None,
    }


def _step_of(run_dir: Path, name: str) -> int | None:
    try:
        for c in json.loads((run_dir / "run.json").read_text()).get("checkpoints", []):
            if c.get("name") == name:
                return int(c["step"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return int(name.split("-")[1]) if name.startswith("step-") and name[5:].isdigit() else None


def run_checkpoints(run_dir: Path) -> list[str]:
    """The checkpoint folder names of a run, in step order (``final`` where its step puts it)."""
    folder = run_dir / "checkpoints"
    names = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not names:
        raise UserError(
            f"{folder}: the run has no checkpoints yet; let it reach train.checkpoint_every or its end"
        )
    return sorted(names, key=lambda n: (_step_of(run_dir, n) is None, _step_of(run_dir, n) or 0, n))


def best_checkpoint_name(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "best.json").read_text()).get("checkpoint")
    except (OSError, ValueError):
        return None


def default_adapter_folder(run_dir: Path) -> Path:
    """What a run's grids show when no axis picks a checkpoint: ``best/``, else the last checkpoint."""
    if (run_dir / "best").is_dir():
        return run_dir / "best"
    return run_dir / "checkpoints" / run_checkpoints(run_dir)[-1]


def _run_target(run_dir: Path, model: str | None, adapter: Path | None = None) -> Target:
    cfg = read_config(run_dir)
    base = spec_from_config(cfg, model)
    folder = adapter or default_adapter_folder(run_dir)
    return Target(
        kind="run",
        path=run_dir,
        base=base.edited(checkpoint_edit(folder, base.model)),
        base_model=base.model,
        prompts=config_prompts(cfg),
        grids_root=run_dir / GRIDS_DIR,
        run_dir=run_dir,
        model_override=model,
    )


# ---- sweep folders ---------------------------------------------------------------------------------


def _sweep_target(sweep_dir: Path, model: str | None) -> Target:
    from sdexp.sweep.best import best_trials, complete_trials, trial_run_dir
    from sdexp.sweep.layout import load_study

    info, study = load_study(sweep_dir)
    complete = complete_trials(study)
    if not complete:
        raise UserError(
            f"{sweep_dir}: the sweep has no COMPLETE trial yet; wait for one to finish "
            f"(`sdexp best {sweep_dir}` lists failed trials and their logs)"
        )
    first = (best_trials(info, study) or complete)[0]
    target = _run_target(trial_run_dir(sweep_dir, first), model, trial_best_folder(sweep_dir, first))
    target.kind, target.path, target.run_dir = "sweep", sweep_dir, None
    target.sweep_dir, target.grids_root = sweep_dir, sweep_dir / GRIDS_DIR
    return target


def trial_best_folder(sweep_dir: Path, trial) -> Path:
    from sdexp.sweep.best import trial_run_dir

    best = trial_run_dir(sweep_dir, trial) / "best"
    if not best.is_dir():
        raise UserError(
            f"{best}: trial {trial.number} completed without a best/ checkpoint; "
            "leave it out of the grid (--x trial=N,...) or rerun it"
        )
    return best


# ---- entry -----------------------------------------------------------------------------------------


def resolve_target(path: str | Path, model: str | None = None) -> Target:
    """Read what PATH is: a sweep folder (sweep.json), a run folder, one of a run's checkpoint
    folders, or a LoRA/embedding file or folder (``model`` names its base)."""
    from sdexp.sweep.layout import SWEEP_FILE

    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"TARGET: {path} does not exist; pass a run folder, a sweep folder or a LoRA file")
    if path.is_dir() and (path / SWEEP_FILE).is_file():
        return _sweep_target(path, model)
    if path.is_dir() and is_run_dir(path):
        return _run_target(path, model)
    folder, run_dir = _owning_run(path)
    if run_dir is not None:  # one of a run's checkpoints: the run's settings, that checkpoint's weights
        target = _run_target(run_dir, model, folder)
        target.kind = "checkpoint"
        return target
    if not model:
        raise UserError(
            f"--model: {path} carries no base model; name the one it was trained on (e.g. --model tiny "
            "or --model ~/models/sd15.safetensors)"
        )
    return Target(
        kind="file",
        path=path,
        base=GenerationSpec(model=model).edited(_file_edit(path, model)),
        base_model=model,
        grids_root=Path.cwd() / GRIDS_DIR,
    )


def _owning_run(path: Path) -> tuple[Path, Path | None]:
    """(the checkpoint folder, its run folder) when ``path`` is, or lies in, ``RUN/best`` or
    ``RUN/checkpoints/NAME``; else (path, None)."""
    for folder in (path, path.parent, path.parent.parent)[: 1 if path.is_dir() else 3]:
        if folder.name == "best" and is_run_dir(folder.parent):
            return folder, folder.parent
        if folder.parent.name == "checkpoints" and is_run_dir(folder.parent.parent):
            return folder, folder.parent.parent
    return path, None


def _file_edit(path: Path, model: str) -> dict:
    from sdexp.export.embedding_files import is_embedding_file

    if path.is_file() and path.suffix == ".safetensors" and is_embedding_file(path):
        return {"embedding": str(path)}
    if path.is_dir():
        return checkpoint_edit(path, model)
    return {"lora": str(path)}
