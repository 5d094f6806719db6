"""Does a pruned TPE sweep find what a dense grid finds, for less training? On tiny_shapes.

    python bench/sweep_vs_grid.py [OUT] [--grid 9] [--trials 6] [--steps 60]

Both search the demo's learning-rate range (1e-4 .. 1e-2, log) for the striped-star LoRA with the
demo's evaluation and objective (sweeps/demo.yaml, rank fixed at 4): a dense grid of --grid values
with no pruning (the reference), then TPE with the median pruner for --trials trials. Prints each
one's best objective, their ratio, and the training steps each spent (pruned trials count the
steps they ran), as a fraction of the grid's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from sdexp.sweep.best import best_trials
from sdexp.sweep.definition import load_definition, parse_definition
from sdexp.sweep.layout import load_study
from sdexp.sweep.runner import SweepRunner
from sdexp.world.shapes import write_concept

REPO = Path(__file__).resolve().parents[1]


def _sweep(out: Path, raw: dict, data: Path) -> dict:
    runner = SweepRunner(
        parse_definition(raw),
        out,
        extra_overrides=[f"data.dir={data}", "logger=none"],
        notify=lambda *_: None,
    )
    runner.prepare()
    started = time.perf_counter()
    runner.run()
    wall = time.perf_counter() - started
    info, study = load_study(out)
    best = best_trials(info, study)[0]
    steps = sum(json.loads((out / t.user_attrs["run_dir"] / "run.json").read_text()).get("steps", 0)
                for t in study.get_trials() if "run_dir" in t.user_attrs)  # fmt: skip
    return {
        "best_value": best.value,
        "best_lr": best.params["train.lr"],
        "feasible": float(best.user_attrs.get("violation", 0.0)) == 0.0,
        "steps": steps,
        "wall_s": wall,
        "trials": {
            s: sum(t.state.name == s for t in study.get_trials()) for s in ("COMPLETE", "PRUNED", "FAIL")
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="bench/sweep-vs-grid", type=Path)
    parser.add_argument("--grid", type=int, default=9)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="TPE's seed")
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="the pruner's n_warmup_steps (0: prune from the first checkpoint)",
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument(
        "--keep-grid", action="store_true", help="reuse OUT/grid of an earlier run (same arguments)"
    )
    args = parser.parse_args()
    out = args.out.resolve()
    earlier = json.loads((out / "result.json").read_text()) if args.keep_grid else None
    for name in ("tpe",) if args.keep_grid else ("tpe", "grid", "concept"):
        shutil.rmtree(out / name, ignore_errors=True)
    data = out / "concept"
    if not args.keep_grid:
        write_concept(data, n=16, seed=0, concept="striped_star", token="sks")
    demo = load_definition(REPO / "sweeps" / "demo.yaml")
    overrides = [o for o in demo.overrides if not o.startswith("train.steps")] + [
        f"train.steps={args.steps}",
        "method.rank=4",
    ]
    lo, hi = 1e-4, 1e-2
    grid_values = [lo * (hi / lo) ** (i / (args.grid - 1)) for i in range(args.grid)]
    grid = _sweep(out / "grid", {"name": "grid", "overrides": overrides, "space": {"train.lr": grid_values},
                                 "sampler": "grid", "pruner": "none"}, data)  # fmt: skip
    if earlier:  # the finished grid study ran nothing now: keep its original wall time
        grid["wall_s"] = earlier["grid"]["wall_s"]
    tpe = _sweep(out / "tpe", {"name": "tpe", "overrides": overrides,
                               "space": {"train.lr": {"type": "float", "low": lo, "high": hi, "log": True}},
                               "sampler": {"name": "tpe", "seed": args.seed, "n_startup_trials": 3},
                               "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": args.warmup},
                               "n_trials": args.trials}, data)  # fmt: skip
    print(
        f"{'':6} {'best objective':>15} {'lr':>10} {'feasible':>9} {'train steps':>12} {'wall s':>8}  trials"
    )
    for name, r in (("grid", grid), ("tpe", tpe)):
        print(f"{name:6} {r['best_value']:15.4f} {r['best_lr']:10.3g} {str(r['feasible']):>9} {r['steps']:12d} "
              f"{r['wall_s']:8.0f}  {r['trials']}")  # fmt: skip
    print(f"TPE / grid: objective {tpe['best_value'] / grid['best_value']:.3f}, training steps "
          f"{tpe['steps'] / grid['steps']:.2f}, wall time {tpe['wall_s'] / grid['wall_s']:.2f}")  # fmt: skip
    (out / "result.json").write_text(json.dumps({"grid": grid, "tpe": tpe}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
