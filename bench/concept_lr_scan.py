"""Learning-rate scan of a LoRA on the tiny_shapes demo concept: the signal sweeps search.

    python bench/concept_lr_scan.py [OUT] [--lrs 1e-5 1e-4 1e-3 3e-3 1e-2] [--steps 150]

For each learning rate (same steps, seed, data): train a LoRA on the striped-star concept, then
measure concept similarity (CLIP-I to the instance images) and accuracy on 50 ordinary prompts,
against the base model on the same prompts and seeds. Prints a table; writes OUT/scan.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sdexp.entry import compose_run_config
from sdexp.run import train_run
from sdexp.world.concept_eval import evaluate_concept
from sdexp.world.shapes import write_concept

# The demo's recipe (sdexp/demo.py); only train.lr varies.
RECIPE = [
    "model=tiny_shapes",
    "method.rank=8",
    "method.targets=all",
    "train.batch_size=4",
    "train.scheduler=constant",
    "logger=none",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="bench/lr-scan", type=Path)
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-5, 1e-4, 1e-3, 3e-3, 1e-2])
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    out = args.out.resolve()
    data = out / "concept"
    if not (data / "concept.json").exists():
        write_concept(data, n=16, seed=0)
    rows = []
    base = evaluate_concept("tiny_shapes", data)
    rows.append({"lr": None, "concept_similarity": base["concept_similarity"], **base["prompt_accuracy"]})
    for lr in args.lrs:
        run_dir = out / f"lr-{lr:g}"
        if not (run_dir / "checkpoints" / "final").exists():
            cfg = compose_run_config(
                [*RECIPE, f"data.dir={data}", f"train.lr={lr}", f"train.steps={args.steps}"]
            )
            started = time.time()
            train_run(cfg, run_dir, notify=lambda *_: None)
            print(f"trained lr={lr:g} in {time.time() - started:.0f}s", flush=True)
        result = evaluate_concept(
            "tiny_shapes", data, lora=run_dir / "checkpoints" / "final" / "lora.safetensors"
        )
        rows.append(
            {"lr": lr, "concept_similarity": result["concept_similarity"], **result["prompt_accuracy"]}
        )
    (out / "scan.json").write_text(json.dumps(rows, indent=2) + "\n")
    b = rows[0]
    print(f"\nLoRA rank 8 (all layers), {args.steps} steps, batch 4, on tiny_shapes; base = no LoRA")
    print(f"{'lr':>8} {'concept sim':>12} {'Δ sim':>7} {'colour':>7} {'shape':>7} {'backgr.':>7} {'all':>6}")
    for r in rows:
        lr = "base" if r["lr"] is None else f"{r['lr']:g}"
        delta = r["concept_similarity"] - b["concept_similarity"]
        print(
            f"{lr:>8} {r['concept_similarity']:12.3f} {delta:+7.3f} {r['colour']:7.2f} {r['shape']:7.2f} "
            f"{r['background']:7.2f} {r['all']:6.2f}"
        )
    print(f"\nresults: {out / 'scan.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
