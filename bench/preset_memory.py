"""Peak memory and img/s of a memory preset (``train=vram12``): real steps of sdexp's own run.

    python bench/preset_memory.py --model sd15-arch --method finetune --json OUT.json   # GPU
    python bench/preset_memory.py --model sdxl-arch --method lora --json OUT.json
    python bench/preset_memory.py --model tiny --set train.optimizer=adamw --steps 2 --warmup 1  # CPU dry run

It writes a few synthetic photos with captions, then runs ``train_run`` (the run.py path: data scan,
caches, the preset's optimizer, checkpointing, precision) on the random-weight ``-arch`` folder of
bench/step.py, with evaluation and validation off. The first ``--warmup`` steps fill the latent and
text caches (each image once) and are untimed. Reported: the absolute CUDA peak
(``torch.cuda.max_memory_allocated``) over the whole run, the peak during the timed steps, and img/s
over the timed steps (batch × accumulation / median step time). ``method=finetune`` runs with
``method.ema_decay=0``, as docs/performance.md tells 12 GB users to.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from step import CAPTION, MODELS, arch_dir, build_model  # noqa: E402

IMAGES = 4
LIMIT_GIB = {"vram12": 12.0}


def write_photos(folder: Path, resolution: int, n: int = IMAGES) -> Path:
    """``n`` seeded noise-and-gradient photos at the model's resolution, each with a caption file."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, resolution, dtype=np.float32)
    for i in range(n):
        base = (ramp[None, :, None] * rng.uniform(0.3, 1.0, 3)[None, None, :]).repeat(resolution, 0)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(CAPTION)
    return folder


def overrides(args, data: Path, cache: Path, total: int) -> list[str]:
    spec = MODELS[args.model]
    model = [f"model={spec.sdexp_model}"]
    if spec.arch is not None:
        model.append(f"model.path={arch_dir(spec)}")
    method = ["method=finetune", "method.ema_decay=0"] if args.method == "finetune" else ["method=lora"]
    return [
        *model,
        *method,
        f"train={args.preset}",
        f"train.steps={total}",
        f"train.device={args.device}",
        f"data.dir={data}",
        f"data.cache.dir={cache}",
        "data.val_images=1",  # eval=none still ranks checkpoints by val/loss: one image, one timestep
        "train.val_timesteps=1",
        "train.val_every=0",
        "train.checkpoint_every=0",
        "eval=none",
        "logger=none",
        *args.set,
    ]


def run(args) -> dict:
    import torch

    from sdexp.callbacks.base import Callback
    from sdexp.entry import compose_run_config
    from sdexp.run import train_run

    spec = MODELS[args.model]
    build_model(spec, "cuda" if args.device == "cuda" else "cpu")
    cuda = args.device == "cuda"
    total = args.warmup + args.steps
    times: list[float] = []
    peaks = {}

    class Timer(Callback):
        def on_train_step_end(self, trainer, module, logs):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            if trainer.state.step == args.warmup and cuda:
                peaks["before_timed_gib"] = torch.cuda.max_memory_allocated() / 2**30
                torch.cuda.reset_peak_memory_stats()
            if trainer.state.step == total and cuda:
                peaks["timed_gib"] = torch.cuda.max_memory_allocated() / 2**30

    with tempfile.TemporaryDirectory(prefix="sdexp-preset-") as tmp:
        resolution = args.resolution or _native(spec)
        data = write_photos(Path(tmp) / "photos", resolution)
        cfg = compose_run_config(overrides(args, data, Path(tmp) / "cache", total))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        train_run(cfg, Path(tmp) / "run", notify=lambda *_: None, callbacks=[Timer()])
        run_json = json.loads((Path(tmp) / "run" / "run.json").read_text())
    steps = [b - a for a, b in zip(times[args.warmup - 1 :], times[args.warmup :])] if args.warmup else []
    t = cfg.train
    images = t.batch_size * t.gradient_accumulation
    step_s = statistics.median(steps) if steps else None
    peak = max(peaks.values()) if peaks else None
    limit = LIMIT_GIB.get(args.preset)
    result = {
        "model": args.model,
        "method": args.method,
        "preset": args.preset,
        "overrides": list(args.set),
        "batch_size": t.batch_size,
        "gradient_accumulation": t.gradient_accumulation,
        "optimizer": t.optimizer,
        "gradient_checkpointing": t.gradient_checkpointing,
        "model_dtype": cfg.model.dtype,
        "resolution": resolution,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "steps_timed": len(steps),
        "step_ms_median": 1000 * step_s if step_s else None,
        "img_s": images / step_s if step_s else None,
        "peak_gib": peak,
        "peak_timed_gib": peaks.get("timed_gib"),
        "peak_method": "torch.cuda.max_memory_allocated, absolute, whole run"
        if cuda
        else "not measured on CPU",
        "fits_limit": (peak <= limit) if (peak is not None and limit) else None,
        "limit_gib": limit,
        "cache": run_json.get("data", {}).get("cache"),
    }
    return result


def _native(spec) -> int:
    return {"sd1": 512, "sd2": 768, "sdxl": 1024}[spec.family] if spec.arch else 64


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=tuple(MODELS), default="sd15-arch")
    p.add_argument("--method", choices=("lora", "finetune"), default="lora")
    p.add_argument("--preset", default="vram12", help="a conf/train preset")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--resolution", type=int, default=None, help="photo size; default the model's native")
    p.add_argument("--steps", type=int, default=6, help="timed steps")
    p.add_argument("--warmup", type=int, default=IMAGES, help="untimed steps first (fill the caches)")
    p.add_argument("--set", nargs="*", default=[], help="more overrides (the CPU dry run's stand-ins)")
    p.add_argument("--json", default=None, help="where to write the result")
    args = p.parse_args(argv)
    from sdexp.quiet import quiet_libraries

    quiet_libraries()
    print_and_save(run(args), args.json)
    return 0


def print_and_save(result: dict, path: str | None) -> None:
    """Print the result as JSON and, with ``path``, write it there too (gpu_check.sh collects them)."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)


if __name__ == "__main__":
    sys.exit(main())
