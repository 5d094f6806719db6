"""`make demo`: a short LoRA run on the built-in `tiny` model over a small image set it draws itself.

It goes through the same doors a person uses (run.py with Hydra overrides, `sdexp generate`,
`sdexp inspect`) and prints where everything went.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a photo of sks toy"


def write_demo_images(out_dir: Path, n: int = 8, seed: int = 0) -> Path:
    """A red square with a yellow disc (the 'sks toy') on varied backgrounds, some with captions."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        bg = tuple(rng.randrange(40, 220) for _ in range(3))
        img = Image.new("RGB", (96, 80), bg)
        draw = ImageDraw.Draw(img)
        size = rng.randrange(30, 50)
        x, y = rng.randrange(5, 96 - size - 5), rng.randrange(5, 80 - size - 5)
        draw.rectangle([x, y, x + size, y + size], fill=(210, 30, 30))
        r = size // 4
        cx, cy = x + size // 2, y + size // 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 220, 40))
        img.save(out_dir / f"toy-{i:02d}.png")
        if i % 2:
            (out_dir / f"toy-{i:02d}.txt").write_text(f"{PROMPT} on a plain background\n")
    return out_dir


def _run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "demo-out").resolve()
    steps = argv[1] if len(argv) > 1 else "60"
    started = time.time()
    for previous in ("run", "generated"):  # the demo's own outputs from an earlier demo
        shutil.rmtree(out / previous, ignore_errors=True)
    data = write_demo_images(out / "data")
    run_dir = out / "run"
    py = sys.executable
    _run(
        [
            py,
            "run.py",
            "model=tiny",
            f"data.dir={data}",
            f"data.prompt={PROMPT}",
            "data.flip=true",
            "method.rank=8",
            "method.targets=all",
            "train.lr=1e-3",
            f"train.steps={steps}",
            "train.scheduler=cosine",
            "train.warmup_steps=5",
            "train.checkpoint_every=20",
            "train.sample_every=20",
            f'train.sample_prompts=["{PROMPT}","a photo of a dog"]',
            "train.sample_steps=10",
            "logger=wandb",
            "logger.group=demo",
            f"hydra.run.dir={run_dir}",
        ]
    )
    lora = run_dir / "checkpoints" / "final" / "lora.safetensors"
    gen_dir = out / "generated"
    _run(
        [
            py,
            "-m",
            "sdexp.cli",
            "generate",
            "--model",
            "tiny",
            "--lora",
            str(lora),
            "--prompt",
            PROMPT,
            "--steps",
            "10",
            "--seed",
            "1",
            "-n",
            "2",
            "--width",
            "64",
            "--height",
            "64",
            "--out",
            str(gen_dir),
        ]
    )
    _run([py, "-m", "sdexp.cli", "inspect", str(lora)])
    print()
    print(f"demo finished in {time.time() - started:.0f}s")
    print(f"  images (input, untouched):   {data}")
    print(f"  run folder:                  {run_dir}")
    print(f"    composed config:           {run_dir / 'config.yaml'}")
    print(f"    metrics:                   {run_dir / 'metrics.jsonl'}")
    print(f"    run summary:               {run_dir / 'run.json'}")
    print(f"    kohya LoRA (ComfyUI/A1111): {lora}")
    print(f"    diffusers LoRA:            {lora.parent / 'diffusers' / 'pytorch_lora_weights.safetensors'}")
    print(f"    sample grids:              {run_dir / 'samples'}")
    print(f"    W&B offline run:           {run_dir / 'wandb'}  (upload with `wandb sync`)")
    print(f"  generated images:            {gen_dir}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
