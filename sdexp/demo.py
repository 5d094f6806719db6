"""`make demo`: teach the built-in `tiny_shapes` model a new concept with LoRA, and measure it.

The concept is a red-and-white striped star ("sks star"), which the base has never seen (every
shape it knows is one solid colour). The demo goes through the doors a person uses (run.py with
Hydra overrides, `sdexp generate`, `sdexp inspect`), then scores the base and the LoRA on the same
prompts and seeds: concept similarity (CLIP-I to the instance images, by the tiny_shapes CLIP)
and accuracy on ordinary prompts (what the fine-tune may have broken), with before/after grids.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# One setting of the learning-rate scan in bench/concept_lr_scan.py (docs/tiny_shapes.md).
RECIPE = [
    "method.rank=8",
    "method.targets=all",
    "train.lr=1e-3",
    "train.batch_size=4",
    "train.scheduler=constant",
]
SAMPLE_PROMPTS = '["a sks star on a blue background","a green square on a yellow background"]'


def _run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def _accuracy(acc: dict) -> str:
    return f"colour {acc['colour']:.0%}  shape {acc['shape']:.0%}  background {acc['background']:.0%}"


def main(argv: list[str] | None = None) -> int:
    from sdexp.callbacks.samples import make_grid
    from sdexp.metrics.clip_models import load_clip
    from sdexp.quiet import quiet_libraries
    from sdexp.world.concept_eval import evaluate_concept
    from sdexp.world.shapes import write_concept

    quiet_libraries()
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "demo-out").resolve()
    steps = argv[1] if len(argv) > 1 else "150"
    started = time.time()
    for previous in ("data", "run", "generated", "grids"):  # the demo's own outputs from an earlier demo
        shutil.rmtree(out / previous, ignore_errors=True)
    data = write_concept(out / "data", n=16, seed=0, concept="striped_star", token="sks")
    print(f"concept images: {data} (16 striped stars, captioned 'a sks star on a <colour> background')")
    run_dir = out / "run"
    py = sys.executable
    _run(
        [
            py,
            "run.py",
            "model=tiny_shapes",
            f"data.dir={data}",
            *RECIPE,
            f"train.steps={steps}",
            f"train.checkpoint_every={int(steps) // 2}",
            f"train.sample_every={int(steps) // 2}",
            f"train.sample_prompts={SAMPLE_PROMPTS}",
            "logger=wandb",
            "logger.group=demo",
            f"hydra.run.dir={run_dir}",
        ]
    )
    lora = run_dir / "checkpoints" / "final" / "lora.safetensors"
    gen_dir = out / "generated"
    _run(
        [py, "-m", "sdexp.cli", "generate", "--model", "tiny_shapes", "--lora", str(lora), "--prompt",
         "a sks star on a purple background", "--seed", "1", "-n", "2", "--out", str(gen_dir)]
    )  # fmt: skip
    _run([py, "-m", "sdexp.cli", "inspect", str(lora)])

    print("\nscoring the base and the LoRA on the same prompts and seeds ...", flush=True)
    judge = load_clip("tiny_shapes")
    before = evaluate_concept("tiny_shapes", data, judge=judge)
    after = evaluate_concept("tiny_shapes", data, lora=lora, judge=judge)
    grids = out / "grids"
    grids.mkdir(parents=True, exist_ok=True)
    for name, result in (("before", before), ("after", after)):
        make_grid(result["concept_images"], columns=8).save(grids / f"{name}-concept.png")
        make_grid(result["ordinary_images"][:16], columns=8).save(grids / f"{name}-ordinary.png")
    gain = after["concept_similarity"] - before["concept_similarity"]
    print()
    print(f"concept similarity (CLIP-I to the instance images): {before['concept_similarity']:.3f} → "
          f"{after['concept_similarity']:.3f} ({gain:+.3f})")  # fmt: skip
    print(f"ordinary prompts ({before['prompt_accuracy']['prompts']}, judged by the tiny_shapes CLIP):")
    print(f"  before: {_accuracy(before['prompt_accuracy'])}")
    print(f"  after:  {_accuracy(after['prompt_accuracy'])}")
    print()
    print(f"demo finished in {time.time() - started:.0f}s")
    print(f"  concept images (input, untouched): {data}")
    print(f"  run folder:                  {run_dir}")
    print(f"    composed config:           {run_dir / 'config.yaml'}")
    print(f"    metrics:                   {run_dir / 'metrics.jsonl'}")
    print(f"    kohya LoRA (ComfyUI/A1111): {lora}")
    print(f"    diffusers LoRA:            {lora.parent / 'diffusers' / 'pytorch_lora_weights.safetensors'}")
    print(f"    samples during training:   {run_dir / 'samples'}")
    print(f"    W&B offline run:           {run_dir / 'wandb'}  (upload with `wandb sync`)")
    print(f"  before/after grids:          {grids}")
    print(f"  generated images:            {gen_dir}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
