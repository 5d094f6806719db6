"""At how many dpmpp_2m steps do the scoring metrics stop moving? (tiny_shapes; base and a LoRA)

    python bench/eval_steps.py [OUT] [--steps 5,10,15,20,30] [--train-steps 150] [--images 16]

Trains the demo's LoRA on the striped-star concept (bench/eval_cost.py's recipe, evaluation off),
then scores the base and the LoRA with ``eval=shapes`` (subject prompts only) at each sampler step
count, same seeds, and prints CLIP-T and CLIP-I per step count with their distance from the
largest count, and the seconds per scoring. docs/evaluation.md records the table and the rule.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

from sdexp.entry import compose_run_config
from sdexp.run import train_run
from sdexp.world.shapes import write_concept

RECIPE = ["model=tiny_shapes", "method.rank=8", "method.targets=all", "train.lr=1e-3", "train.batch_size=4",
          "logger=none"]  # fmt: skip


# Without prior prompts the preset's forgetting constraint cannot be measured: CLIP-I alone.
SUBJECT_ONLY = "eval.objectives=[{name:subject,terms:[{metric:eval/clip_i}]}]"


def main() -> int:
    from sdexp.base_generations import sampling_pipeline
    from sdexp.data.scan import scan_folder
    from sdexp.evaluation.setup import build_evaluator, run_resolution
    from sdexp.rng import isolated_rng

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="bench/eval-steps", type=Path)
    parser.add_argument("--steps", default="5,10,15,20,30")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    data = write_concept(out / "concept", n=16, seed=0, concept="striped_star", token="sks")
    common = [*RECIPE, f"data.dir={data}", f"train.steps={args.train_steps}"]
    lora = train_run(compose_run_config([*common, "eval=none"]), out / "lora", notify=lambda *_: None)
    lora_file = lora.run_dir / "checkpoints" / "final" / "lora.safetensors"
    cfg = compose_run_config(
        [*common, "eval=shapes", f"eval.images={args.images}", "eval.prior_prompts=[]", SUBJECT_ONLY]
    )
    records = scan_folder(data, default_prompt=cfg.data.prompt)
    evaluator, off = build_evaluator(cfg, records, run_resolution(cfg), "cpu")
    assert evaluator is not None, off
    settings = evaluator.settings
    table = {}
    for name, lora_path in (("base", None), ("lora", lora_file)):
        pipe, _ = sampling_pipeline("tiny_shapes", sampler=settings.sampler, lora=lora_path)
        for steps in [int(s) for s in args.steps.split(",")]:
            evaluator.settings = replace(settings, steps=steps)
            with isolated_rng(pipe.device):
                result = evaluator.evaluate(pipe, frozen_text=True)
            table[(name, steps)] = {
                "clip_t": result.metrics["eval/clip_t"],
                "clip_i": result.metrics["eval/clip_i"],
                "seconds": round(result.seconds, 2),
            }
            print(name, steps, table[(name, steps)], flush=True)
    most = max(int(s) for s in args.steps.split(","))
    print(
        "\n| model | steps | CLIP-T | Δ to most | CLIP-I | Δ to most | s/scoring |\n|---|---|---|---|---|---|---|"
    )
    for (name, steps), row in table.items():
        ref = table[(name, most)]
        print(f"| {name} | {steps} | {row['clip_t']:.2f} | {row['clip_t'] - ref['clip_t']:+.2f} | "
              f"{row['clip_i']:.4f} | {row['clip_i'] - ref['clip_i']:+.4f} | {row['seconds']} |")  # fmt: skip
    (out / "eval-steps.json").write_text(json.dumps({f"{n}-{s}": r for (n, s), r in table.items()}, indent=1))
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"{time.perf_counter() - started:.0f}s")
    raise SystemExit(code)
