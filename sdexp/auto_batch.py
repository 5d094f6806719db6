"""``train.auto_batch``: the largest batch that fits on the CUDA device, found once and remembered.

The search tries real training steps of the run's own model, method, resolution and precision at
growing batch sizes (doubling, then bisecting between the last fit and the first failure). A batch
fits when its steps raise no out-of-memory error and their peak stays under ``MARGIN`` of the
device's memory (fragmentation, other buckets and evaluation need the rest). It runs in a child
process, so a failed try leaves nothing behind in the run's own allocator, and its answer is kept
in ``$SDEXP_CACHE/auto_batch.json`` under everything that decides memory: a sweep searches in its
first trial and every later trial (and later sweeps on the same card) reuses the answer.

The effective batch (``batch_size × gradient_accumulation``) is what the optimiser sees, so it is
kept whenever the user set one (anything but 1 × 1): the search only re-splits it into the largest
micro-batch that fits and divides it. With the defaults (1 × 1) the batch becomes the largest that
fits, up to the images an epoch holds. On a CPU there is nothing to search: a warning, and the
configured batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from sdexp.atomic import write_json_atomic
from sdexp.errors import UserError

MARGIN = 0.9  # a batch fits when its peak stays under this share of the device's memory
MAX_BATCH = 256
PROBE_STEPS = 2  # the second step holds the optimiser state the first one allocated
CACHE_FILE = "auto_batch.json"


def largest_fitting(fits: Callable[[int], bool], limit: int) -> int:
    """The largest batch in 1..``limit`` for which ``fits`` holds (0 if not even 1), assuming that
    memory grows with the batch: doubling up to the first failure, then bisection."""
    good, bad = 0, None
    batch = 1
    while batch <= limit:
        if not fits(batch):
            bad = batch
            break
        good = batch
        if batch == limit:
            return good
        batch = min(batch * 2, limit)
    if bad is None:
        return good
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def split_batch(fit: int, batch_size: int, accumulation: int) -> tuple[int, int]:
    """(batch_size, gradient_accumulation) for a device where batches up to ``fit`` fit: a set
    effective batch is kept, split into its largest divisor that fits; 1 × 1 becomes ``fit`` × 1."""
    effective = batch_size * accumulation
    if effective == 1:
        return max(fit, 1), 1
    micro = max(d for d in range(1, min(fit, effective) + 1) if effective % d == 0)
    return micro, effective // micro


def search_limit(batch_size: int, accumulation: int, images: int) -> int:
    """How far the search needs to go: the set effective batch, else one epoch's images."""
    effective = batch_size * accumulation
    return min(effective if effective > 1 else max(images, 1), MAX_BATCH)


def memory_key(cfg, device_name: str, total_bytes: int) -> str:
    """Everything that decides a step's memory, as one string (the cache's key). LoRA ranks and
    learning rates are left out: they move the peak by far less than ``MARGIN`` leaves."""
    m, t = cfg.model, cfg.train
    method = cfg.method
    kind = getattr(method, "adapter", None) if method.name == "dreambooth" else None
    parts = {
        "model": str(Path(os.path.expanduser(m.path)).resolve()) if m.path else m.name,
        "vae": m.vae,
        "dtype": m.dtype,
        "method": method.name + (f"/{kind}" if kind else ""),
        "text_encoder": bool(getattr(method, "train_text_encoder", False)),
        "prior": bool(getattr(method, "prior_preservation", False)),
        "resolution": t.resolution or m.resolution,
        "buckets": cfg.data.buckets.max_resolution if cfg.data.buckets.enabled else None,
        "precision": t.mixed_precision,
        "checkpointing": t.gradient_checkpointing,
        "optimizer": t.optimizer,
        "ema": float(getattr(method, "ema_decay", 0.0) or 0.0) > 0,
        "device": device_name,
        "memory": total_bytes,
    }
    return json.dumps(parts, sort_keys=True)


class FitCache:
    """Found batches by ``memory_key``: ``{"fit": N, "limit": L}``, where ``fit < limit`` means a
    real ceiling was hit and ``fit == limit`` only that nothing up to ``limit`` failed."""

    def __init__(self, path: Path):
        self.path = path

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def lookup(self, key: str, limit: int) -> int | None:
        entry = self._read().get(key)
        if entry is None:
            return None
        if entry["fit"] < entry["limit"] or limit <= entry["limit"]:
            return min(entry["fit"], limit)
        return None  # searched less far than needed now

    def store(self, key: str, fit: int, limit: int) -> None:
        data = self._read()
        data[key] = {"fit": fit, "limit": limit}
        write_json_atomic(self.path, data)


def default_cache() -> FitCache:
    from sdexp.models.tiny import cache_root

    return FitCache(cache_root() / CACHE_FILE)


def choose_batch(
    cfg,
    *,
    images: int,
    device_type: str,
    device_name: str = "",
    total_bytes: int = 0,
    search: Callable[[int], int] | None = None,
    cache: FitCache | None = None,
    notify=print,
) -> tuple[int, int]:
    """(batch_size, gradient_accumulation) for ``cfg`` with ``train.auto_batch``. ``search(limit)``
    returns the largest fitting batch up to ``limit`` (the real one runs ``probe_in_child``)."""
    t = cfg.train
    if device_type != "cuda":
        notify(
            f"warning: train.auto_batch needs a CUDA device; on {device_type} the configured "
            f"batch_size={t.batch_size} × gradient_accumulation={t.gradient_accumulation} is used"
        )
        return t.batch_size, t.gradient_accumulation
    limit = search_limit(t.batch_size, t.gradient_accumulation, images)
    cache = cache or default_cache()
    key = memory_key(cfg, device_name, total_bytes)
    fit = cache.lookup(key, limit)
    source = f"remembered in {cache.path}"
    if fit is None:
        fit = (search or (lambda n: probe_in_child(cfg, n)))(limit)
        cache.store(key, fit, limit)
        source = "searched"
    if fit < 1:
        raise UserError(
            f"train.auto_batch: not even batch 1 fits in {total_bytes / 2**30:.1f} GiB on {device_name}; "
            "try train=vram12 (gradient checkpointing, 8-bit AdamW, bf16 weights) or a lower train.resolution"
        )
    batch, accumulation = split_batch(fit, t.batch_size, t.gradient_accumulation)
    notify(
        f"train.auto_batch: batches up to {fit} fit on {device_name} ({source}); training at "
        f"batch_size={batch} × gradient_accumulation={accumulation}"
    )
    return batch, accumulation


def apply_auto_batch(cfg, images: int, notify=print) -> None:
    """Set ``cfg.train.batch_size`` and ``gradient_accumulation`` before the run's trainer is built
    (the saved config then records what was trained)."""
    import torch

    from sdexp.trainer import resolve_device

    device_type = resolve_device(cfg.train.device, "train.device")
    name, total = "", 0
    if device_type == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        name, total = props.name, props.total_memory
    cfg.train.batch_size, cfg.train.gradient_accumulation = choose_batch(
        cfg, images=images, device_type=device_type, device_name=name, total_bytes=total, notify=notify
    )


# ----- the real probe: training steps in a child process --------------------------------------
def probe_in_child(cfg, limit: int, timeout: float = 1800) -> int:
    """``largest_fitting`` with real training steps, run in a fresh interpreter."""
    from omegaconf import OmegaConf

    from sdexp.config import as_plain_dict

    with tempfile.TemporaryDirectory(prefix="sdexp-auto-batch-") as tmp:
        config, answer = Path(tmp) / "config.yaml", Path(tmp) / "fit.json"
        config.write_text(OmegaConf.to_yaml(OmegaConf.create(as_plain_dict(cfg))))
        command = [sys.executable, "-m", "sdexp.auto_batch", str(config), str(limit), str(answer)]
        done = subprocess.run(command, timeout=timeout, capture_output=True, text=True)
        if done.returncode != 0 or not answer.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise UserError("train.auto_batch: the batch search failed:\n  " + "\n  ".join(tail))
        return int(json.loads(answer.read_text())["fit"])


def step_probe(cfg, run_dir: Path) -> Callable[[int], bool]:
    """``fits(batch)``: ``PROBE_STEPS`` optimiser steps of ``cfg``'s run at that batch on its device,
    images cycled from the largest bucket; False on out-of-memory or a peak above ``MARGIN``."""
    import gc

    import torch

    from sdexp.data.concept_dataset import collate_concepts
    from sdexp.methods import build_module
    from sdexp.trainer import Trainer

    module = build_module(cfg)
    module.load_data()
    trainer = Trainer.from_config(cfg.train, run_dir)
    trainer.module = module
    module.setup(trainer)
    optimizer, _ = module.configure_optimizers()
    trainable = trainer.accelerator.prepare(*module.trainable_modules())
    trainable = list(trainable) if isinstance(trainable, tuple | list) else [trainable]
    optimizer = trainer.accelerator.prepare(optimizer)
    module.on_modules_prepared(trainable)
    for m in trainable:
        m.train()
    dataset = module.train_dataset
    sizes = dataset.buckets_per_item
    largest = max(set(sizes), key=lambda s: s[0] * s[1])
    indices = [i for i, s in enumerate(sizes) if s == largest]
    cuda = trainer.device.type == "cuda"
    total = torch.cuda.get_device_properties(trainer.device).total_memory if cuda else 0

    def fits(batch: int) -> bool:
        items = [dataset[indices[i % len(indices)]] for i in range(batch)]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            for step in range(PROBE_STEPS):
                out = module.training_step(collate_concepts(items), step)
                trainer.accelerator.backward(out.loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                del out
            if cuda:
                torch.cuda.synchronize()
                return torch.cuda.max_memory_allocated() <= MARGIN * total
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()

    return fits


def main(argv: list[str]) -> int:
    """Child: ``python -m sdexp.auto_batch CONFIG.yaml LIMIT OUT.json``."""
    from omegaconf import OmegaConf

    from sdexp.config import to_run_config

    config, limit, out = Path(argv[0]), int(argv[1]), Path(argv[2])
    cfg = to_run_config(OmegaConf.load(config))
    cfg.train.auto_batch = False
    cfg.train.gradient_accumulation = 1  # memory is per micro-batch
    with tempfile.TemporaryDirectory(prefix="sdexp-auto-batch-run-") as tmp:
        fit = largest_fitting(step_probe(cfg, Path(tmp)), limit)
    write_json_atomic(out, {"fit": fit, "limit": limit})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
