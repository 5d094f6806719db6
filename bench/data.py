"""Data-pipeline throughput on this machine: how fast the training loader makes batches, and how much
of a training step waits for them.

    python bench/data.py OUT [--images 200] [--size 512] [--resolution 512] [--workers 0 1 2]
                             [--buckets both|on|off] [--steps 40] [--cache] [--threads 1]

1. Pipeline alone: the run's own ``train_dataloader`` (built by ``preflight``: data scanned, no model
   loaded), batch 4, one epoch per setting, for each worker count, buckets off and on. Reports
   images/s after the first batch (steady state) and the first batch's latency (worker start-up).
2. In training: short ``train_run``s of the built-in tiny model (64 px, batch 4) with
   ``data.num_workers`` 0 and 2, reporting ``timings.data_wait / timings.loop`` from run.json. Two
   folders: the ``--size`` images, where decoding a large photo for each 64 px sample makes the tiny
   step data-bound (the worst case), and the same images scaled by 64/``--resolution``, which keeps
   part 1's ratio of source size to training size (closer to a real run's balance).
3. ``--cache``: the part-2 runs at 0 workers with ``data.cache.latents=true``, twice; the second run
   reads the latents the first wrote. Printed as n/a when this checkout has no working latent cache.

Every ratio is against a reference measured in the same invocation: 0 workers, buckets off,
uncached. The synthetic images are written under OUT only (seeded JPEGs of mixed sizes and aspect
ratios) and reused by later invocations with the same settings.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

BATCH = 4
TINY = 64  # the built-in tiny model's resolution
MARKER = "bench-data.json"  # a folder holding this was written by this script
ASPECTS = [(1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16), (2, 1), (1, 2)]
PROMPT = "a synthetic photo"


def write_images(folder: Path, *, count: int, size: int, seed: int = 0) -> Path:
    """``count`` seeded JPEGs, long side 0.75-1.5 x ``size``, aspect ratios from ASPECTS.

    Smooth colour fields plus grain: they compress and decode like photos, not like flat fills."""
    import numpy as np
    from PIL import Image

    settings = {"count": count, "size": size, "seed": seed, "version": 1}
    marker = folder / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return folder
    if folder.exists():
        if not marker.is_file():
            raise SystemExit(f"{folder} exists and was not written by bench/data.py; choose another OUT")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    for i in range(count):
        aw, ah = rng.choice(ASPECTS)
        long_side = round(size * rng.uniform(0.75, 1.5))
        w, h = (
            (long_side, round(long_side * ah / aw)) if aw >= ah else (round(long_side * aw / ah), long_side)
        )
        field = Image.fromarray(noise.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize(
            (w, h), Image.Resampling.BICUBIC
        )
        grain = noise.normal(0, 8, (h, w, 3))
        pixels = np.clip(np.asarray(field, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img-{i:04d}.jpg", quality=90)
    marker.write_text(json.dumps(settings))
    return folder


def bucket_overrides(resolution: int) -> list[str]:
    """Valid bucket settings around ``resolution``: kohya's 64 px steps from 256 px up, 16 px below."""
    step = 64 if resolution >= 256 else 16
    low = max(step, resolution // 2 // step * step)
    return [
        "data.buckets.enabled=true",
        f"data.buckets.step={step}",
        f"data.buckets.min_resolution={low}",
        f"data.buckets.max_resolution={resolution * 2 // step * step}",
    ]


def base_overrides(data: Path, **extra) -> list[str]:
    out = [
        "model=tiny",
        "logger=none",
        "eval=none",
        f"data.dir={data}",
        f"data.prompt={PROMPT}",
        f"train.batch_size={BATCH}",
        "data.val_images=1",  # the smallest validation: one image, one timestep
        "train.val_timesteps=1",
    ]
    return out + [f"{k}={v}" for k, v in extra.items()]


def pipeline_rate(data: Path, resolution: int, workers: int, buckets: bool) -> dict:
    """One epoch through the run's own loader: images/s after the first batch, first-batch seconds."""
    from sdexp.entry import compose_run_config
    from sdexp.run import preflight

    overrides = base_overrides(data, **{"train.resolution": resolution, "data.num_workers": workers})
    cfg = compose_run_config(overrides + (bucket_overrides(resolution) if buckets else []))
    module = preflight(cfg)
    loader = module.train_dataloader()
    module.on_train_epoch_start(0)
    first = None
    seen = first_n = 0
    begin = time.perf_counter()
    for batch in loader:
        seen += len(batch["path"])
        if first is None:
            first, first_n = time.perf_counter(), seen
    end = time.perf_counter()
    steady = (seen - first_n) / (end - first) if end > first else float("nan")
    return {"images": seen, "images_per_s": steady, "first_batch_s": first - begin}


def cache_available() -> bool:
    """Whether this checkout's config has ``data.cache.latents`` at all (the runs then show whether it works)."""
    from sdexp.entry import compose_run_config
    from sdexp.errors import UserError

    try:
        compose_run_config(["model=tiny", "data.cache.latents=true"])
    except UserError:
        return False
    return True


def train_timings(data: Path, run_dir: Path, steps: int, **extra) -> dict:
    """A short tiny-model run; its run.json timings, per-step milliseconds and data-wait share."""
    from sdexp.entry import compose_run_config
    from sdexp.run import train_run

    cfg = compose_run_config(base_overrides(data, **{"train.steps": steps, **extra}))
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train_run(cfg, run_dir, notify=lambda *_: None)
    t = json.loads((run_dir / "run.json").read_text())["timings"]
    return {**t, "step_ms": 1000 * t["loop"] / steps, "wait_share": t["data_wait"] / t["loop"]}


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}" if reference else "n/a"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="long side of the synthetic images, about")
    parser.add_argument("--resolution", type=int, default=512, help="training resolution of part 1")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--buckets", choices=["both", "on", "off"], default="both")
    parser.add_argument("--steps", type=int, default=40, help="steps of each part-2 run")
    parser.add_argument("--cache", action="store_true", help="also runs with data.cache.latents=true")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the main process (0: default)"
    )
    args = parser.parse_args(argv)

    import torch

    from sdexp.quiet import quiet_libraries

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    big = write_images(args.out / f"images-{args.size}", count=args.images, size=args.size)
    small_size = max(16, round(args.size * TINY / args.resolution))
    small = write_images(args.out / f"images-{small_size}", count=args.images, size=small_size)
    print(f"{args.images} JPEGs at ~{args.size} px and ~{small_size} px ({time.perf_counter() - t0:.1f} s)")
    results: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}

    # 1. the loader alone
    bucket_modes = {"both": [False, True], "on": [True], "off": [False]}[args.buckets]
    rows = []
    for buckets in bucket_modes:
        for workers in args.workers:
            r = pipeline_rate(big, args.resolution, workers, buckets)
            rows.append({"buckets": buckets, "workers": workers, **r})
    ref = next((r for r in rows if r["workers"] == 0 and not r["buckets"]), None)
    print(f"\n1. pipeline alone: {args.images} images ~{args.size} px -> {args.resolution} px, batch {BATCH}")
    print("| buckets | workers | images/s | x ref | first batch s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {'on' if r['buckets'] else 'off'} | {r['workers']} | {r['images_per_s']:.1f} | "
            f"{_ratio(r['images_per_s'], ref['images_per_s']) if ref else 'n/a'} | "
            f"{r['first_batch_s']:.2f} |"
        )
    results["pipeline"] = rows

    # 2. (and 3.) inside training
    runs = []
    has_cache = args.cache and cache_available()
    for label, folder in ((f"~{args.size} px", big), (f"~{small_size} px", small)):
        for workers in (0, 2):
            t = train_timings(
                folder,
                args.out / "runs" / f"{folder.name}-w{workers}",
                args.steps,
                **{"data.num_workers": workers},
            )
            runs.append({"images": label, "workers": workers, "cache": "off", **t})
        if args.cache:
            cache_dir = args.out / f"cache-{folder.name}"
            shutil.rmtree(cache_dir, ignore_errors=True)
            for attempt in ("fill", "hit"):
                row = {"images": label, "workers": 0, "cache": attempt}
                if has_cache:
                    extra = {"data.cache.latents": "true", "data.cache.dir": cache_dir, "data.num_workers": 0}
                    t = train_timings(
                        folder, args.out / "runs" / f"{folder.name}-cache-{attempt}", args.steps, **extra
                    )
                    written = any(p.is_file() for p in cache_dir.rglob("*"))
                    row.update(t if written else {"note": "data.cache.latents wrote nothing"})
                else:
                    row["note"] = "data.cache.latents is not in this checkout's config"
                runs.append(row)
    print(
        f"\n2. in training: tiny model, {TINY} px, batch {BATCH}, {args.steps} steps (reference: same images, 0 workers, uncached)"
    )
    print("| images | workers | latent cache | step ms | x ref | data wait s | loop s | wait share |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        ref = next(
            x for x in runs if x["images"] == r["images"] and x["workers"] == 0 and x["cache"] == "off"
        )
        if "step_ms" not in r:
            print(
                f"| {r['images']} | {r['workers']} | {r['cache']} | n/a | n/a | n/a | n/a | n/a ({r['note']}) |"
            )
            continue
        print(
            f"| {r['images']} | {r['workers']} | {r['cache']} | {r['step_ms']:.0f} | "
            f"{_ratio(r['step_ms'], ref['step_ms'])} | {r['data_wait']:.2f} | {r['loop']:.2f} | {r['wait_share']:.0%} |"
        )
    results["training"] = runs
    (args.out / "data_bench.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {args.out / 'data_bench.json'}  (total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
