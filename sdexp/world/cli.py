"""``sdexp world shapes`` and ``sdexp world concept``: write the procedural training sets of
sdexp.world.shapes from the command line (listed in sdexp.cli.COMMAND_MODULES)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sdexp.cli import arg, command_group, subcommand

command_group("world", help="write procedural image sets (shapes world, DreamBooth concepts)")

_COMMON = [
    arg("out", metavar="OUT", type=Path, help="new (or empty) folder to write"),
    arg("--n", type=int, required=True, help="number of images"),
    arg("--seed", type=int, required=True, help="same seed and arguments give the same bytes"),
    arg("--size", type=int, default=64, help="image side in pixels (default 64)"),
]


@subcommand(
    "world shapes",
    help="write a captioned shapes world (PNG + .txt caption per image, world.json manifest)",
    args=[
        *_COMMON,
        arg(
            "--split",
            default="train",
            choices=["train", "heldout", "any"],
            help="train: never the held-out colour/shape pairs; heldout: half of them are (default train)",
        ),
        arg("--workers", type=int, default=1, help="processes; the output does not depend on it (default 1)"),
    ],
)
def cmd_world_shapes(args: argparse.Namespace) -> int:
    from sdexp.world.shapes import write_world

    start = time.perf_counter()
    out = write_world(args.out, args.n, args.seed, size=args.size, split=args.split, workers=args.workers)
    print(f"wrote {args.n} images to {out} in {time.perf_counter() - start:.2f} s")
    return 0


@subcommand(
    "world concept",
    help="write instance images of a patterned concept for DreamBooth-style tests (concept.json manifest)",
    args=[
        *_COMMON,
        arg(
            "--concept",
            default="striped_star",
            help="striped_star, checker_square or checker_star (default striped_star)",
        ),
        arg("--token", default="sks", help="rare word naming the concept in captions (default sks)"),
    ],
)
def cmd_world_concept(args: argparse.Namespace) -> int:
    from sdexp.world.shapes import write_concept

    start = time.perf_counter()
    out = write_concept(args.out, args.n, args.seed, concept=args.concept, token=args.token, size=args.size)
    print(f"wrote {args.n} {args.concept} images to {out} in {time.perf_counter() - start:.2f} s")
    return 0


@subcommand(
    "world eval",
    help="judge a model on the shapes world: its CLIP's zero-shot accuracy and its prompt accuracy",
    args=[
        arg("model", metavar="MODEL", help="tiny_shapes or a model folder (e.g. a `sdexp pretrain` model/)"),
        arg(
            "--heldout",
            type=Path,
            default=None,
            help="a heldout-split world folder for the CLIP's zero-shot accuracy",
        ),
        arg("--clip", default=None, help="the judge (default: MODEL's own clip/)"),
        arg("--prompts", type=int, default=200, help="held-out prompts to generate (default 200; 0 = none)"),
        arg("--guidance", type=float, nargs="+", default=[5.0], help="guidance scale(s) to generate at"),
        arg("--steps", type=int, default=20, help="sampling steps (DPM++ 2M)"),
        arg("--seed", type=int, default=0),
        arg("--device", default="auto", help="auto | cpu | cuda"),
        arg("--json", type=Path, default=None, help="write the results here"),
        arg("--grid", type=Path, default=None, help="write a grid of the first 64 generations here (PNG)"),
    ],
)
def cmd_world_eval(args: argparse.Namespace) -> int:
    import json

    import torch

    from sdexp.base_generations import sampling_pipeline
    from sdexp.callbacks.samples import make_grid
    from sdexp.metrics.clip_models import load_clip
    from sdexp.world.evaluate import heldout_prompts, prompt_accuracy, zero_shot_accuracy

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    clip = load_clip(args.clip or args.model, device)
    results: dict = {"model": str(args.model), "judge": clip.name}
    if args.heldout:
        results["clip_zero_shot"] = zero_shot_accuracy(clip, args.heldout)
        print(f"CLIP zero-shot on {args.heldout}: {_fmt(results['clip_zero_shot'])}")
    if args.prompts:
        pipe, size = sampling_pipeline(args.model, device=device)
        triples = heldout_prompts(args.prompts, args.seed)
        for guidance in args.guidance:
            start = time.perf_counter()
            acc, images = prompt_accuracy(
                pipe,
                clip,
                triples,
                seed=args.seed,
                steps=args.steps,
                guidance=guidance,
                size=size,
            )
            acc["seconds"] = round(time.perf_counter() - start, 1)
            results[f"prompt_accuracy@{guidance:g}"] = acc
            print(f"prompt accuracy, guidance {guidance:g}: {_fmt(acc)}")
            if args.grid and guidance == args.guidance[0]:
                make_grid(images[:64], columns=8).save(args.grid)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _fmt(result: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
