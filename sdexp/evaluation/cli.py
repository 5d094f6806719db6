"""`sdexp eval`: score a run's checkpoints, one checkpoint, a LoRA file or a model folder with the
same evaluation a run does at its checkpoints; a table to the terminal, JSON to a file.

    sdexp eval runs/my-run                                  # base + every checkpoint, run's config
    sdexp eval runs/my-run/checkpoints/step-000200 eval.images=32
    sdexp eval my.safetensors model=tiny_shapes data.dir=photos eval=shapes --out scores.json
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from sdexp.cli import arg, subcommand
from sdexp.errors import ConfigError, UserError


@dataclass
class Target:
    name: str
    step: int | None
    lora: Path | None = None
    model: Path | None = None  # a whole model folder scored in place of the base
    embedding: Path | None = None  # a textual-inversion file loaded into the base (with the LoRA, if any)


def _run_dir_of(path: Path) -> Path | None:
    for candidate in (path, path.parent.parent):
        if (candidate / "config.yaml").is_file() and (candidate / "checkpoints").is_dir():
            return candidate
    return None


def _checkpoint_step(run_dir: Path, name: str) -> int | None:
    import json

    run_json = run_dir / "run.json"
    if run_json.is_file():
        for c in json.loads(run_json.read_text()).get("checkpoints", []):
            if c["name"] == name:
                return c["step"]
    return int(name.split("-")[1]) if name.startswith("step-") else None


def _checkpoint_target(folder: Path, step: int | None) -> Target:
    """A LoRA checkpoint scores on the base; a full fine-tune's is a pipeline folder of its own."""
    from sdexp.export.embedding_files import checkpoint_embedding

    if (folder / "model_index.json").is_file():
        return Target(folder.name, step, model=folder)
    lora, embedding = folder / "lora.safetensors", checkpoint_embedding(folder)
    if embedding is not None:  # textual inversion, with its LoRA when pivotal tuning made one
        return Target(folder.name, step, lora=lora if lora.is_file() else None, embedding=embedding)
    return Target(folder.name, step, lora=lora)


def targets_for(path: Path, checkpoints: list[str]) -> tuple[Path | None, list[Target]]:
    """(the run folder the target belongs to, or None; what to score besides the base)."""
    path = path.expanduser().resolve()
    if not path.exists():
        raise UserError(
            f"TARGET: {path} does not exist; pass a run folder, a checkpoint, a LoRA file or a model"
        )
    run_dir = _run_dir_of(path)
    if run_dir == path:  # a run folder: its checkpoints, in step order
        found = [p for p in (path / "checkpoints").iterdir() if p.is_dir() and not p.name.startswith(".")]
        if checkpoints:
            missing = [c for c in checkpoints if not (path / "checkpoints" / c).is_dir()]
            if missing:
                names = ", ".join(sorted(p.name for p in found))
                raise UserError(
                    f"--checkpoint: {missing[0]} is not in {path / 'checkpoints'} (there: {names})"
                )
            found = [path / "checkpoints" / c for c in checkpoints]
        targets = [_checkpoint_target(p, _checkpoint_step(path, p.name)) for p in found]
        return run_dir, sorted(targets, key=lambda t: (t.step is None, t.step or 0, t.name))
    if path.is_dir() and (path / "model_index.json").is_file():  # a model, or a full fine-tune's checkpoint
        step = _checkpoint_step(run_dir, path.name) if run_dir else None
        return run_dir, [Target(path.name, step, model=path)]
    from sdexp.export.embedding_files import checkpoint_embedding, is_embedding_file

    if path.is_dir() and ((path / "lora.safetensors").is_file() or checkpoint_embedding(path)):
        step = _checkpoint_step(run_dir, path.name) if run_dir else None
        return run_dir, [_checkpoint_target(path, step)]
    if path.is_file() and path.suffix == ".safetensors":
        if is_embedding_file(path):
            return None, [Target(path.stem, None, embedding=path)]
        return None, [Target(path.stem, None, lora=path)]
    raise UserError(
        f"TARGET: {path} is not a run folder (config.yaml + checkpoints/), a checkpoint folder (lora.safetensors), "
        "a LoRA .safetensors file or a diffusers model folder (model_index.json)"
    )


def eval_run_config(run_dir: Path | None, overrides: list[str]):
    """The run's saved config with ``overrides`` applied, or one composed from ``overrides``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from sdexp.config import describe_omegaconf_error, to_run_config
    from sdexp.entry import compose_run_config

    if run_dir is None:
        return compose_run_config(overrides)
    saved = OmegaConf.load(run_dir / "config.yaml")
    groups = [
        o for o in overrides if o.split("=", 1)[0] in ("eval", "model", "data", "method", "train", "logger")
    ]
    if groups:
        names = [g for g in groups if not g.startswith("eval=")]
        if names:
            raise ConfigError(
                f"{names[0]}: a run folder keeps its own {names[0].split('=')[0]}; only eval=NAME may change"
            )
        composed = compose_run_config(groups)
        from sdexp.config import as_plain_dict

        saved.eval = OmegaConf.create(as_plain_dict(composed)["eval"])
    rest = [o for o in overrides if o not in groups]
    try:
        merged = OmegaConf.merge(saved, OmegaConf.from_dotlist(rest))
    except OmegaConfBaseException as err:
        raise ConfigError(describe_omegaconf_error(err)) from None
    return to_run_config(merged)


def _table(rows: list[dict], objectives: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = [f"objective/{o}" for o in objectives] + [
        "eval/clip_i", "eval/clip_t", "eval/dino", "eval/memorisation/nearest_mean", "eval/fid", "eval/kid",
        "eval/forgetting/clip_t_change", "eval/forgetting/kid", "eval/prompt_drift",
    ]  # fmt: skip
    keys = [k for k in keys if any(k in r["metrics"] for r in rows)]
    table = Table(title="sdexp eval")
    table.add_column("checkpoint")
    table.add_column("step", justify="right")
    for k in keys:
        table.add_column(k.removeprefix("eval/"), justify="right")
    for r in rows:
        values = [f"{r['metrics'][k]:.4g}" if k in r["metrics"] else "-" for k in keys]
        mark = "" if r["feasible"] else " (infeasible)"
        table.add_row(r["name"] + mark, "-" if r["step"] is None else str(r["step"]), *values)
    Console().print(table)


@subcommand(
    "eval",
    help="score a run's checkpoints, a checkpoint, a LoRA file or a model (CLIP-T/I, FID/KID, probes)",
    args=[
        arg(
            "target",
            metavar="TARGET",
            type=Path,
            help="run folder, checkpoint folder, LoRA file or model folder",
        ),
        arg(
            "overrides",
            nargs="*",
            help="config overrides, e.g. eval=shapes eval.images=32 (with a LoRA file or "
            "model folder also model=... data.dir=...)",
        ),  # fmt: skip
        arg("--checkpoint", action="append", default=[], help="only these checkpoints of a run (repeatable)"),
        arg("--out", type=Path, default=Path("eval.json"), help="JSON results (default eval.json)"),
        arg("--device", default="auto", choices=["auto", "cpu", "cuda"]),
        arg("--no-base", action="store_true", help="do not score the base model"),
        arg(
            "--embedding",
            action="append",
            default=[],
            metavar="FILE[:TOKEN]",
            help="textual-inversion embedding loaded for every row, the base's too (repeatable)",
        ),
    ],
)
def cmd_eval(args: argparse.Namespace) -> int:
    from sdexp.evaluation.runner import evaluate_targets
    from sdexp.generate import check_embeddings

    embeddings = check_embeddings(args.embedding)
    run_dir, targets = targets_for(args.target, args.checkpoint)
    cfg = eval_run_config(run_dir, list(args.overrides))
    rows = evaluate_targets(
        cfg, targets, device=args.device, with_base=not args.no_base, out=args.out, embeddings=embeddings
    )
    _table(rows, [o.name for o in cfg.eval.objectives])
    print(f"results: {args.out}")
    return 0
