"""``sdexp pretrain [--out DIR] [overrides...]`` (listed in sdexp.cli.COMMAND_MODULES)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sdexp.cli import arg, subcommand


@subcommand(
    "pretrain",
    help="train an SD-architecture model from scratch (CLIP, VAE, UNet) on a captioned folder",
    args=[
        arg(
            "overrides", nargs="*", help="Hydra overrides of conf/pretrain.yaml, e.g. data.dir=DIR budget=gpu"
        ),
        arg("--out", type=Path, default=None, help="output folder (default runs/pretrain-TIME)"),
    ],
)
def cmd_pretrain(args: argparse.Namespace) -> int:
    from sdexp.pretrain.recipe import Recipe, compose_pretrain_config

    cfg = compose_pretrain_config(args.overrides)
    out = args.out or Path("runs") / time.strftime("pretrain-%Y-%m-%d_%H-%M-%S")
    model = Recipe(cfg, out).run()
    print(f"model folder: {model}")
    return 0
