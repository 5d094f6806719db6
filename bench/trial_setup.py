"""What a sweep trial pays for its base, with and without lending one loaded base to every trial.

    python bench/trial_setup.py [--model sd15-arch] [--trials 3] [--dtype fp32] [--device cpu]

Builds the random-weight SD 1.5 architecture folder once (bench/step.py's, bf16 on disk, in the
cache), then times, for ``--trials`` consecutive trials each way, what a trial does with its base:
borrow it (a fresh load and move to the device, or the pooled one), add the trial's LoRA (the
run's own ``LoraModule.configure_adapters``), and give it back (dropped, or restored and checked
against its fingerprint). Prints seconds per trial and the ratios; the first pooled trial loads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step import MODELS, build_model  # noqa: E402


def trial(cfg, dtype, device, *, pooled: bool) -> dict:
    """One trial's base work: borrow, adapters, give back; seconds of each."""
    from sdexp.methods.lora import LoraModule
    from sdexp.models.base_pool import POOL

    started = time.perf_counter()
    base = POOL.borrow(cfg, dtype, device, keeps_base=True)
    borrowed = time.perf_counter()
    module = LoraModule(cfg)
    module.base = base
    module.configure_adapters()
    adapters = time.perf_counter()
    why = POOL.release() if pooled else None
    del module, base
    if not pooled:
        import gc

        gc.collect()
    done = time.perf_counter()
    return {
        "borrow": round(borrowed - started, 3),
        "adapters": round(adapters - borrowed, 3),
        "give_back": round(done - adapters, 3),
        "total": round(done - started, 3),
        "reused": bool(POOL.last.get("reused")),
        "dropped": why,
    }


def main() -> int:
    import torch

    from sdexp.entry import compose_run_config
    from sdexp.models.base_pool import reusing_bases
    from sdexp.models.loading import DTYPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15-arch", choices=sorted(MODELS))
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="frozen weights' dtype")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    spec = MODELS[args.model]
    started = time.perf_counter()
    folder = build_model(spec, "cuda" if args.device.startswith("cuda") else "cpu")
    print(f"model folder {folder} ready in {time.perf_counter() - started:.1f}s")
    cfg = compose_run_config(
        [f"model={spec.sdexp_model}", f"model.path={folder}", "method=lora", "method.rank=4", "logger=none"]
    )
    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    rows = {"reload": [], "pooled": []}
    with reusing_bases(False):
        for i in range(args.trials):
            rows["reload"].append(trial(cfg, dtype, device, pooled=False))
            print(f"reload  trial {i}: {rows['reload'][-1]}")
    with reusing_bases(True):
        for i in range(args.trials):
            rows["pooled"].append(trial(cfg, dtype, device, pooled=True))
            print(f"pooled  trial {i}: {rows['pooled'][-1]}")
    reload = [r["total"] for r in rows["reload"]]
    pooled = [r["total"] for r in rows["pooled"]]
    later = pooled[1:] or pooled
    summary = {
        "model": args.model,
        "dtype": args.dtype,
        "device": args.device,
        "reload_mean_s": round(sum(reload) / len(reload), 3),
        "pooled_first_s": pooled[0],
        "pooled_later_mean_s": round(sum(later) / len(later), 3),
        "later_over_reload": round(sum(later) / len(later) / (sum(reload) / len(reload)), 3),
        "sweep_over_reload": round(sum(pooled) / sum(reload), 3),
        "rows": rows,
    }
    print(
        f"per-trial base set-up: reload {summary['reload_mean_s']}s; pooled: first {pooled[0]}s, then "
        f"{summary['pooled_later_mean_s']}s ({summary['later_over_reload']}x); "
        f"{args.trials} trials together {summary['sweep_over_reload']}x"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
