"""The ``sdexp`` command: one function per subcommand, registered with ``@subcommand``.

To add a subcommand, write ``@subcommand("name", help=..., args=[arg("--flag", ...)])`` over a
function ``(args) -> int | None`` in any module and list that module in ``COMMAND_MODULES``.
A two-word name ("world shapes") nests under a group (``sdexp world shapes``); see ``command_group``.
Every UserError becomes one line on stderr and exit code 2; heavy imports happen inside commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sdexp.errors import EXIT_USER_ERROR, UserError, report_and_exit
from sdexp.quiet import quiet_environment, quiet_libraries

# Modules whose import registers further subcommands (kept lazy: imported only to build the parser).
COMMAND_MODULES: tuple[str, ...] = (
    "sdexp.world.cli",
    "sdexp.pretrain.cli",
    "sdexp.evaluation.cli",
    "sdexp.sweep.cli",
    "sdexp.data.caption_cli",
    "sdexp.data.cli",
    "sdexp.grid.cli",  # `sdexp grid`
    "sdexp.dashboard",  # `sdexp dashboard`
    "analysis.cli",  # `sdexp report`; analysis/ is installed with sdexp
)


@dataclass
class Command:
    name: str
    run: Callable[[argparse.Namespace], int | None]
    help: str
    args: list[tuple[tuple, dict]] = field(default_factory=list)


COMMANDS: dict[str, Command] = {}
GROUPS: dict[str, str] = {}  # group name -> help, for two-word subcommand names


def arg(*names, **kwargs) -> tuple[tuple, dict]:
    """One ``add_argument`` call, written where the subcommand is declared."""
    return names, kwargs


def subcommand(name: str, *, help: str, args: list[tuple[tuple, dict]] | None = None):
    """Register ``fn(args)`` as ``sdexp NAME``."""

    def register(fn):
        COMMANDS[name] = Command(name, fn, help, list(args or []))
        return fn

    return register


def command_group(name: str, *, help: str) -> None:
    """Give the group of two-word subcommands ``NAME ...`` its help line."""
    GROUPS[name] = help


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line and exit 2, like every other user error."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


# ---------------------------------------------------------------- subcommands


def _lora_pairs(files: list[str], scales: list[float] | None) -> list[tuple[str, float]]:
    if not scales:
        return [(f, 1.0) for f in files]
    if not files:
        raise UserError("--lora-scale given without --lora")
    if len(scales) == 1:
        return [(f, scales[0]) for f in files]
    if len(scales) != len(files):
        raise UserError(
            f"--lora-scale: give one scale for all LoRAs or one per --lora ({len(files)}), not {len(scales)}"
        )
    return list(zip(files, scales, strict=True))


# LoRA files on a base: generated with (`generate`) or merged into it (`export-model`).
LORA_ARGS = [
    arg(
        "--lora",
        action="append",
        default=[],
        metavar="FILE",
        help="LoRA file or folder (kohya or diffusers); repeatable",
    ),
    arg(
        "--lora-scale", action="append", type=float, metavar="S", help="one scale per --lora, or one for all"
    ),
]


@subcommand(
    "generate",
    help="generate images from a base model and LoRAs (PNG with A1111 parameters)",
    args=[
        arg(
            "--model", required=True, help="checkpoint file (.safetensors), diffusers folder or built-in name"
        ),
        arg("--vae", default=None, help="a replacement VAE (.safetensors file or diffusers folder)"),
        arg("--family", default="auto", choices=["auto", "sd1", "sd2", "sdxl"]),
        *LORA_ARGS,
        arg(
            "--embedding",
            action="append",
            default=[],
            metavar="FILE[:TOKEN]",
            help="textual-inversion embedding (A1111/ComfyUI or diffusers .safetensors, or a checkpoint "
            "folder); token: the one it was trained with, else the file name; repeatable",
        ),
        arg("--prompt", required=True),
        arg("--negative", default="", help="negative prompt"),
        arg("--steps", type=int, default=30),
        arg("--guidance", type=float, default=7.5, help="classifier-free guidance scale"),
        arg(
            "--seed",
            type=int,
            default=None,
            help="seed of the first image (image i uses seed+i); random if omitted",
        ),
        arg("-n", type=int, default=1, help="number of images"),
        arg("--width", type=int, default=None, help="default: the model's native resolution"),
        arg("--height", type=int, default=None),
        arg("--scheduler", default="euler_a", choices=["euler", "euler_a", "dpmpp_2m", "ddim"]),
        arg("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps"),
        arg(
            "--dtype",
            default="auto",
            choices=["auto", "fp32", "fp16", "bf16"],
            help="auto: fp16 on CUDA, else fp32",
        ),
        arg("--out", required=True, type=Path, help="output folder"),
    ],
)
def cmd_generate(args: argparse.Namespace) -> int:
    from sdexp.generate import check_embeddings, check_loras, generate

    loras = _lora_pairs(args.lora, args.lora_scale)
    check_loras(loras)  # a mistyped path fails in a second, before the libraries load
    check_embeddings(args.embedding)
    quiet_libraries()
    paths = generate(
        args.model,
        loras,
        prompt=args.prompt,
        negative=args.negative,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        n=args.n,
        width=args.width,
        height=args.height,
        scheduler=args.scheduler,
        out_dir=args.out,
        device=args.device,
        dtype=args.dtype,
        vae=args.vae,
        family=args.family,
        embeddings=args.embedding,
    )
    for path in paths:
        print(path)
    return 0


@subcommand(
    "inspect",
    help="show format, family, rank/alpha and targets of a LoRA, or the components of a model folder",
    args=[
        arg("path", help="LoRA .safetensors file (or folder holding one), model folder or built-in name"),
        arg("--json", action="store_true", help="print JSON instead of tables"),
    ],
)
def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from sdexp.inspect import inspect_path, print_report

    info = inspect_path(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_report(info)
    return 0


@subcommand(
    "export-model",
    help="write a model (built-in, folder or file; optionally with LoRAs merged) as a diffusers folder or one .safetensors",
    args=[
        arg(
            "model",
            metavar="SRC",
            help="built-in name, diffusers folder (a full fine-tune checkpoint too) or checkpoint file",
        ),
        arg(
            "out", metavar="OUT", type=Path, help="a new folder (diffusers) or FILE.safetensors (single-file)"
        ),
        arg("--format", default="diffusers", choices=["diffusers", "single-file"]),
        arg("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"]),
        *LORA_ARGS,
        arg("--family", default="auto", choices=["auto", "sd1", "sd2", "sdxl"]),
        arg(
            "--allow-pickle", action="store_true", help="open a .ckpt (pickle) SRC; only for files you trust"
        ),
    ],
)
def cmd_export_model(args: argparse.Namespace) -> int:
    from sdexp.export.model_files import check_destination, export_model

    out: Path = args.out.expanduser()
    check_destination(out, args.format)  # fails before the libraries load
    loras = _lora_pairs(args.lora, args.lora_scale)
    quiet_libraries()
    path = export_model(
        args.model,
        out,
        fmt=args.format,
        dtype=args.dtype,
        loras=loras,
        family=args.family,
        allow_pickle=args.allow_pickle,
    )
    print(path)
    return 0


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = _Parser(prog="sdexp", description="Stable Diffusion fine-tuning experiments.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in COMMANDS.values():
        group, _, leaf = command.name.rpartition(" ")
        if group and group not in groups:
            g = sub.add_parser(group, help=GROUPS.get(group), description=GROUPS.get(group))
            g.set_defaults(_group=g)
            groups[group] = g.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
        p = (groups[group] if group else sub).add_parser(leaf, help=command.help, description=command.help)
        for names, kwargs in command.args:
            p.add_argument(*names, **kwargs)
        p.set_defaults(_run=command.run, _name=command.name)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the subcommand, turn UserErrors into one line and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        (getattr(args, "_group", None) or parser).print_help(sys.stderr)
        return EXIT_USER_ERROR
    quiet_environment()
    try:
        return int(args._run(args) or 0)
    except UserError as err:
        report_and_exit(err, prefix=f"sdexp {args._name}: error")
    except KeyboardInterrupt:
        print("sdexp: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    # `python -m sdexp.cli`: run the importable module, whose COMMANDS the COMMAND_MODULES register into
    from sdexp.cli import main as registered_main

    sys.exit(registered_main())
