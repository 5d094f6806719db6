"""`make demo`: find how to teach the built-in `tiny_shapes` model a new concept, by a sweep.

The concept is a red-and-white striped star ("sks star"), which the base has never seen (every
shape it knows is one solid colour). The demo goes through the doors a person uses: `sdexp sweep
sweeps/demo.yaml` (six TPE trials over learning rate and LoRA rank, hopeless ones pruned at their
scored checkpoints), `sdexp best --export`, `sdexp generate`. Every checkpoint of every trial is
scored (`eval=shapes`): concept similarity (CLIP-I to the instance images, by the tiny_shapes CLIP),
prompt fidelity, nearness to the training images, and forgetting on ordinary prompts against the
base's images; the objective is concept similarity with prior prompts losing at most 1 point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
    import json

    from sdexp.quiet import quiet_libraries
    from sdexp.world.shapes import write_concept

    quiet_libraries()
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "demo-out").resolve()
    started = time.time()
    for previous in ("data", "sweep", "best", "generated"):  # the demo's own outputs from an earlier demo
        shutil.rmtree(out / previous, ignore_errors=True)
    data = write_concept(out / "data", n=16, seed=0, concept="striped_star", token="sks")
    print(f"concept images: {data} (16 striped stars, captioned 'a sks star on a <colour> background')")
    py = sys.executable
    sweep = out / "sweep"
    _run([py, "-m", "sdexp.cli", "sweep", "sweeps/demo.yaml", f"data.dir={data}", "--out", str(sweep)])
    best_dir = out / "best"
    _run([py, "-m", "sdexp.cli", "best", str(sweep), "--export", str(best_dir)])
    trial = json.loads((best_dir / "trial.json").read_text())
    print("\nthe best trial's checkpoints, scored by the tiny_shapes CLIP (step 0 is the base model):")
    print_scores(Path(trial["run_dir"]))
    lora = best_dir / "lora.safetensors"
    gen_dir = out / "generated"
    _run(
        [py, "-m", "sdexp.cli", "generate", "--model", "tiny_shapes", "--lora", str(lora), "--prompt",
         "a sks star on a purple background", "--seed", "1", "-n", "2", "--out", str(gen_dir)]
    )  # fmt: skip
    print()
    print(f"demo finished in {time.time() - started:.0f}s")
    print(f"  concept images (input, untouched): {data}")
    print(f"  sweep folder:                {sweep}  (study.db, trials/NNNN/ run folders)")
    print(f"  report:                      {sweep / 'report' / 'index.html'}")
    print(f"  best checkpoint (exported):  {best_dir}")
    print(f"    kohya LoRA (ComfyUI/A1111): {lora}")
    print(f"    diffusers LoRA:            {best_dir / 'diffusers' / 'pytorch_lora_weights.safetensors'}")
    print(
        f"  W&B offline runs:            {sweep / 'trials'}/*/wandb, grouped as 'demo'  (upload with `wandb sync`)"
    )
    print(f"  generated images:            {gen_dir}")
    print(f"  the study in a browser:      sdexp dashboard {sweep}  (.venv/bin/sdexp; serves on 127.0.0.1)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
