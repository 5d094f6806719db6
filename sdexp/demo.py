"""`make demo`: teach the built-in `tiny_shapes` model a new concept with LoRA, and measure it.

The concept is a red-and-white striped star ("sks star"), which the base has never seen (every
shape it knows is one solid colour). The demo goes through the doors a person uses (run.py with
Hydra overrides, `sdexp generate`, `sdexp inspect`). The run scores the base and every checkpoint
(`eval=shapes`): concept similarity (CLIP-I to the instance images, by the tiny_shapes CLIP),
prompt fidelity, nearness to the training images, and forgetting on ordinary prompts against the
base's images; best/ holds the checkpoint with the best objective.
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


COLUMNS = (
    ("eval/clip_i", "concept sim."),
    ("eval/clip_t", "prompt fid."),
    ("eval/memorisation/nearest_mean", "nearest train"),
    ("eval/forgetting/clip_t_change", "prior CLIP-T Δ"),
    ("eval/forgetting/kid", "prior KID"),
    ("objective/subject", "objective"),
)


def print_scores(run_dir: Path) -> dict:
    """The evaluation of every checkpoint (step 0 is the base) and which one best/ holds."""
    import json

    from sdexp.tracking.run_folder import read_metrics

    best = json.loads((run_dir / "best.json").read_text())
    rows = [r for r in read_metrics(run_dir) if "objective/subject" in r]
    print("step  " + "  ".join(f"{title:>14}" for _, title in COLUMNS))
    for r in rows:
        mark = "  <- best/" if r["step"] == best["step"] else ("  (base)" if r["step"] == 0 else "")
        flag = "" if r["objective/subject/violation"] == 0 else "  (breaks the forgetting bound)"
        print(f"{r['step']:>4}  " + "  ".join(f"{r[k]:>14.3f}" for k, _ in COLUMNS) + mark + flag)
    return best


def main(argv: list[str] | None = None) -> int:
    from sdexp.quiet import quiet_libraries
    from sdexp.world.shapes import write_concept

    quiet_libraries()
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "demo-out").resolve()
    steps = int(argv[1]) if len(argv) > 1 else 150
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
            f"train.checkpoint_every={steps // 3}",
            f"train.sample_prompts={SAMPLE_PROMPTS}",
            "eval=shapes",
            "logger=wandb",
            "logger.group=demo",
            f"hydra.run.dir={run_dir}",
        ]
    )
    print("\nevery checkpoint scored by the tiny_shapes CLIP (eval=shapes; step 0 is the base model):")
    best = print_scores(run_dir)
    lora = run_dir / "best" / "lora.safetensors"
    gen_dir = out / "generated"
    _run(
        [py, "-m", "sdexp.cli", "generate", "--model", "tiny_shapes", "--lora", str(lora), "--prompt",
         "a sks star on a purple background", "--seed", "1", "-n", "2", "--out", str(gen_dir)]
    )  # fmt: skip
    _run([py, "-m", "sdexp.cli", "inspect", str(lora)])

    import json

    timing = json.loads((run_dir / "run.json").read_text())["evaluation"]
    print()
    print(f"best checkpoint: {best['checkpoint']} (step {best['step']}), objective {best['objectives']['subject']:.3f} "
          f"against {best['base']['objectives']['subject']:.3f} for the base")  # fmt: skip
    print(f"evaluation took {timing['seconds']:.0f}s of the run ({timing['share_of_wall']:.0%}), "
          f"{timing['seconds_per_checkpoint']:.1f}s per checkpoint")  # fmt: skip
    print(f"demo finished in {time.time() - started:.0f}s")
    print(f"  concept images (input, untouched): {data}")
    print(f"  run folder:                  {run_dir}")
    print(f"    composed config:           {run_dir / 'config.yaml'}")
    print(f"    metrics (train, val, eval): {run_dir / 'metrics.jsonl'}")
    print(f"    best checkpoint:           {run_dir / 'best'}  (scores in {run_dir / 'best.json'})")
    print(f"    kohya LoRA (ComfyUI/A1111): {lora}")
    print(f"    diffusers LoRA:            {lora.parent / 'diffusers' / 'pytorch_lora_weights.safetensors'}")
    print(f"    evaluation images:         {run_dir / 'samples'}")
    print(f"    W&B offline run:           {run_dir / 'wandb'}  (upload with `wandb sync`)")
    print(f"  generated images:            {gen_dir}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
