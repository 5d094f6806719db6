"""`sdexp grid`: labelled image grids, the same seed in every cell.

sdexp grid RUN_DIR --prompts "a photo of sks dog" "sks dog in the snow"      # × checkpoints
sdexp grid SWEEP_DIR                                                        # × trials' best/
sdexp grid lora.safetensors --model ~/models/sd15.safetensors --scales 0,0.5,1
sdexp grid RUN_DIR --x guidance=3,5,7.5 --y seed=0,1,2 --prompts "sks dog on a beach"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdexp.cli import arg, subcommand
from sdexp.errors import UserError
from sdexp.samplers import SAMPLERS

AXIS_KEYS = "prompt, negative, seed, steps, guidance, scheduler, scale, size, checkpoint, trial"
DEFAULT_SCALES = "0,0.5,1"


def _columns(args: argparse.Namespace, target):
    """The column axis: --x, or one of the shortcuts, else the target's natural one."""
    from sdexp.grid.axes import make_axis, parse_axis, split_values

    given = [
        (flag, value)
        for flag, value in (
            ("--x", args.x),
            ("--checkpoints", args.checkpoints),
            ("--trials", args.trials),
            ("--scales", args.scales),
        )
        if value
    ]
    if len(given) > 1:
        raise UserError(f"{given[0][0]} and {given[1][0]} both choose the columns; give one of them")
    if given and given[0][0] == "--x":
        return parse_axis(args.x, target, "--x")
    if given:
        flag, value = given[0]
        key = {"--checkpoints": "checkpoint", "--trials": "trial", "--scales": "scale"}[flag]
        return make_axis(key, split_values(key, value), target, flag)
    key = {"run": "checkpoint", "sweep": "trial"}.get(target.kind, "scale")
    return make_axis(key, split_values(key, DEFAULT_SCALES) if key == "scale" else [], target, "--x")


def _rows_and_prompt(args: argparse.Namespace, target, columns):
    """(row axis, the prompt every cell shares when no axis varies it)."""
    from sdexp.grid.axes import parse_axis
    from sdexp.grid.build import prompt_axis

    if not args.y:
        if columns.key == "prompt":
            raise UserError("--x prompt=...: the prompts are the columns; give the rows with --y KEY=V1,V2")
        return prompt_axis(args.prompts, target), None
    rows = parse_axis(args.y, target, "--y")
    if rows.key == "prompt" and args.prompts:
        raise UserError("--prompts and --y prompt=... both give the prompts; give one of them")
    if rows.key == "prompt" or columns.key == "prompt":
        return rows, None
    prompts = list(args.prompts or target.prompts[:1])
    if len(prompts) != 1:
        raise UserError(
            f"--prompts: with --y {rows.key}=... every cell shares one prompt; give one (not {len(prompts)}) "
            "or put the prompts on an axis: --x prompt='a cat|a dog'"
        )
    return rows, prompts[0]


@subcommand(
    "grid",
    help="labelled image grid, the same seed in every cell: prompts x checkpoints, trials, LoRA scales or any two settings",
    args=[
        arg("target", metavar="TARGET", help="run folder, sweep folder, a run's checkpoint, or a LoRA/embedding file (with --model)"),
        arg("--prompts", nargs="+", metavar="PROMPT", help="the rows (default: the run's eval.prompts, else train.sample_prompts, else data.prompt)"),
        arg("--checkpoints", metavar="all|NAME,...", help="columns: a run's checkpoints (step-000050,final,best,base; default for a run: all)"),
        arg("--trials", metavar="all|best|N,...", help="columns: a sweep's COMPLETE trials, each its best/ (default for a sweep: all)"),
        arg("--scales", metavar="S,...", help=f"columns: the LoRA at these scales; 0 is the base (default for a LoRA file: {DEFAULT_SCALES})"),
        arg("--x", metavar="KEY=V1,V2", help=f"columns: any axis; KEY: {AXIS_KEYS} (prompt values split on |)"),
        arg("--y", metavar="KEY=V1,V2", help="rows: any axis (default: the prompts)"),
        arg("--model", default=None, help="base model: needed for a LoRA file; replaces a run's base"),
        arg("--seed", type=int, default=0, help="the seed of every cell (default 0)"),
        arg("--steps", type=int, default=None, help="default: the run's train.sample_steps (20)"),
        arg("--guidance", type=float, default=None, help="default: the run's train.sample_guidance (7.5)"),
        arg("--scheduler", default=None, choices=list(SAMPLERS), help="default: the run's train.sample_scheduler"),
        arg("--negative", default=None, help="negative prompt"),
        arg("--width", type=int, default=None, help="default: the run's resolution, else the model's native one"),
        arg("--height", type=int, default=None),
        arg("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps"),
        arg("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help="auto: fp16 on CUDA, else fp32"),
        arg("--name", default=None, help="the grid's folder name under TARGET/grids/ (default ROWS-x-COLUMNS)"),
        arg("--out", type=Path, default=None, help="output folder (default TARGET/grids/NAME/)"),
    ],
)  # fmt: skip
def cmd_grid(args: argparse.Namespace) -> int:
    from sdexp.grid.build import make_grid, settings_edit
    from sdexp.grid.sources import resolve_target
    from sdexp.quiet import quiet_libraries

    if args.seed < 0:
        raise UserError(f"--seed: must be 0 or more (got {args.seed})")
    target = resolve_target(args.target, args.model)
    columns = _columns(args, target)
    rows, prompt = _rows_and_prompt(args, target, columns)
    settings = {
        k: getattr(args, k) for k in ("seed", "steps", "guidance", "scheduler", "negative", "width", "height")
    }
    base = target.base.edited(settings_edit(**settings))
    if prompt is not None:
        base = base.edited({"prompt": prompt})
    out = args.out or target.grids_root / (args.name or f"{rows.key}-x-{columns.key}")
    quiet_libraries()
    path = make_grid(base, rows, columns, out, device=args.device, dtype=args.dtype)
    print(path)
    return 0
