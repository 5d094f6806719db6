"""What a trial of the shipped ``lora_tpe`` sweep costs, from 2 shortened trials, and the 16-trial
projection.

    python bench/sweep_breakdown.py --model sd15-arch --steps 40 --json OUT.json   # GPU
    python bench/sweep_breakdown.py --model tiny --steps 4 --device cpu --set eval.images=1 eval.steps=1  # dry

The sweep runs as shipped (bf16, eval.images=16, TPE, Hyperband) except: 2 trials, ``train.steps``
800 -> ``--steps`` with ``checkpoint_every`` and the pruner's resources scaled alike (so the same 4
checkpoints are scored), the sweep's trials sharing one worker as ``sdexp sweep`` runs them. The
judge is the tiny_shapes CLIP (no real CLIP weights offline); its cost is small beside generation.

From each trial's run.json (``timings``: setup before step 1, loop, teardown after the last step;
``evaluation``: scoring seconds): evaluation inside the loop is the scored checkpoints but the last
(scored in teardown) and the base's (scored in setup), so
train = loop - (checkpoints_scored - 1) x seconds_per_checkpoint,
setup = setup - base_seconds, teardown = teardown - seconds_per_checkpoint.
Projection of 16 trials at 800 steps: 16 x (setup + train x 800/steps + evaluation + teardown), the
trials' mean, no pruning (an upper bound; pruned trials stop early).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for _path in (REPO, BENCH):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from preset_memory import print_and_save, write_photos  # noqa: E402
from step import MODELS, arch_dir, build_model  # noqa: E402

SWEEP = REPO / "sweeps" / "lora_tpe.yaml"
SHIPPED_STEPS = 800
TRIALS = 2
JUDGE = "eval.clip=tiny_shapes"


def shorten(raw: dict, steps: int) -> dict:
    """The shipped definition at ``steps`` steps (checkpoints and pruner resources scaled alike)."""
    scale = steps / SHIPPED_STEPS

    def scaled(value) -> int:
        return max(1, math.ceil(int(value) * scale))

    out = dict(raw)
    rewritten = []
    for override in raw.get("overrides", []):
        key, _, value = override.partition("=")
        if key in ("train.steps", "train.checkpoint_every"):
            override = f"{key}={scaled(value)}"
        rewritten.append(override)
    out["overrides"] = rewritten
    out["n_trials"] = TRIALS
    pruner = raw.get("pruner")
    if isinstance(pruner, dict):
        out["pruner"] = {
            k: scaled(v) if k in ("min_resource", "max_resource", "n_warmup_steps") else v
            for k, v in pruner.items()
        }
    return out


def breakdown(run: dict, steps: int) -> dict:
    """One trial's run.json as setup / train / evaluation / teardown seconds and its 800-step cost."""
    t, e = run["timings"], run.get("evaluation") or {}
    per = e.get("seconds_per_checkpoint") or 0.0
    scored = e.get("checkpoints_scored") or 0
    base = e.get("base_seconds") or 0.0
    train = max(t["loop"] - max(scored - 1, 0) * per, 0.0)
    setup = max(t["setup"] - base, 0.0)
    teardown = max(t["teardown"] - (per if scored else 0.0), 0.0)
    evaluation = e.get("seconds", 0.0)
    return {
        "wall": run.get("wall_seconds"),
        "steps": run.get("steps"),
        "status": run.get("status"),
        "setup": setup,
        "train": train,
        "evaluation": evaluation,
        "teardown": teardown,
        "raw_timings": t,
        "raw_evaluation": e,
        "projected_trial_s": setup + train * SHIPPED_STEPS / steps + evaluation + teardown,
    }


def run(args) -> dict:
    from sdexp.sweep.definition import load_yaml, parse_definition
    from sdexp.sweep.runner import SweepRunner

    spec = MODELS[args.model]
    build_model(spec, "cuda" if args.device == "cuda" else "cpu")
    model = [f"model={spec.sdexp_model}"] + ([f"model.path={arch_dir(spec)}"] if spec.arch else [])
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="sdexp-sweep-breakdown-") as tmp:
        resolution = {"sd1": 512, "sd2": 768, "sdxl": 1024}[spec.family] if spec.arch else 64
        data = write_photos(Path(tmp) / "photos", resolution, n=args.images)
        extra = [*model, f"data.dir={data}", f"train.device={args.device}", "logger=none", JUDGE, *args.set]
        raw = shorten(load_yaml(SWEEP.read_text()), args.steps)
        runner = SweepRunner(parse_definition(raw, str(SWEEP)), Path(tmp) / "sweep", extra_overrides=extra,
                             notify=lambda *_: None)  # fmt: skip
        runner.prepare()
        outcome = runner.run()
        trials = []
        for folder in sorted((runner.sweep_dir / "trials").iterdir()):
            path = folder / "run.json"
            if path.exists():
                trials.append({"trial": folder.name, **breakdown(json.loads(path.read_text()), args.steps)})
    finished = [t for t in trials if t["status"] == "finished"]
    mean = sum(t["projected_trial_s"] for t in finished) / len(finished) if finished else None
    return {
        "sweep": SWEEP.stem,
        "model": args.model,
        "steps": args.steps,
        "shipped_steps": SHIPPED_STEPS,
        "overrides": list(args.set),
        "completed": outcome.completed,
        "pruned": outcome.pruned,
        "failed": outcome.failed,
        "trials": trials,
        "projected_16_trials_s": 16 * mean if mean is not None else None,
        "projection": "16 x mean(setup + train x 800/steps + evaluation + teardown), no pruning",
        "bench_wall_s": time.time() - started,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=tuple(MODELS), default="sd15-arch")
    p.add_argument("--steps", type=int, default=40, help="train.steps of a shortened trial (shipped: 800)")
    p.add_argument("--images", type=int, default=8, help="training photos")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--set", nargs="*", default=[], help="more overrides (the CPU dry run's)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from sdexp.quiet import quiet_libraries

    quiet_libraries()
    result = run(args)
    print_and_save(result, args.json)
    return 0 if result["failed"] == 0 and result["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
