"""What scoring checkpoints costs a run: the same run with evaluation on and off, same machine.

    python bench/eval_cost.py [OUT] [--steps 150] [--every 50] [--images 16] [--eval-steps 10] [--device auto]

Runs the demo's LoRA on the tiny_shapes striped-star concept twice, `eval=shapes` and `eval=none`
(the reference), and prints wall times, their ratio, seconds per scored checkpoint, the share of
the run spent evaluating, and whether the two runs saved byte-identical weights (they must).
On a GPU pass --device cuda; everything else is unchanged.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from sdexp.entry import compose_run_config
from sdexp.run import train_run
from sdexp.world.shapes import write_concept

RECIPE = [
    "model=tiny_shapes",
    "method.rank=8",
    "method.targets=all",
    "train.lr=1e-3",
    "train.batch_size=4",
    "logger=none",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="bench/eval-cost", type=Path)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--eval-steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8, help="eval.batch_size")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    data = write_concept(out / "concept", n=16, seed=0, concept="striped_star", token="sks")
    common = [
        *RECIPE,
        f"data.dir={data}",
        f"train.steps={args.steps}",
        f"train.checkpoint_every={args.every}",
        f"train.device={args.device}",
    ]
    evaluation = [
        "eval=shapes",
        f"eval.images={args.images}",
        f"eval.steps={args.eval_steps}",
        f"eval.batch_size={args.batch}",
    ]
    results = {}
    for name, extra in (("off", ["eval=none"]), ("on", evaluation)):
        started = time.perf_counter()
        result = train_run(compose_run_config(common + extra), out / name, notify=lambda *_: None)
        results[name] = {
            "wall": time.perf_counter() - started,
            "run": json.loads((result.run_dir / "run.json").read_text()),
        }
    timing = results["on"]["run"]["evaluation"]
    same = all(
        (out / "on" / "checkpoints" / c / "lora.safetensors").read_bytes()
        == (out / "off" / "checkpoints" / c / "lora.safetensors").read_bytes()
        for c in ("final", f"step-{args.every:06d}")
    )
    off, on = results["off"]["wall"], results["on"]["wall"]
    print(f"device: {results['on']['run']['device']}; {args.steps} steps, scored at 0 and every {args.every}; "
          f"{args.images} subject + 16 prior images at {args.eval_steps} sampler steps")  # fmt: skip
    print(f"wall, evaluation off (reference): {off:8.1f} s")
    print(f"wall, evaluation on:              {on:8.1f} s   ratio on/off {on / off:.2f}")
    print(f"evaluation: {timing['seconds']:.1f} s = {timing['share_of_wall']:.0%} of the run; "
          f"{timing['seconds_per_checkpoint']:.2f} s per checkpoint ({timing['checkpoints_scored']}), "
          f"base {timing['base_seconds']:.2f} s (+{timing['base_generation_seconds']:.2f} s generating uncached base images)")  # fmt: skip
    print(f"byte-identical weights with evaluation on and off: {same}")
    (out / "eval-cost.json").write_text(
        json.dumps({"off_s": off, "on_s": on, "evaluation": timing, "identical": same}, indent=2)
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
