"""Copy a `sdexp pretrain` model folder into the package as the built-in `tiny_shapes`.

    python -m sdexp.world.ship OUT/pt/model

Checks what the package promises (a complete pipeline folder with clip/, fp16 safetensors only,
≤ 15 MB together) before replacing the shipped copy, so a bad recipe run cannot land by accident.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from sdexp.errors import UserError, report_and_exit

MAX_BYTES = 15 * 1024 * 1024


def check_shippable(model_dir: Path) -> int:
    """Total size in bytes; UserError naming what is wrong otherwise."""
    from safetensors import safe_open

    from sdexp.models.loading import resolve_model

    resolve_model(model_dir, key="model")
    if not (model_dir / "clip" / "model.safetensors").exists():
        raise UserError(f"{model_dir} has no clip/model.safetensors; ship a `sdexp pretrain` model folder")
    files = [p for p in model_dir.rglob("*") if p.is_file()]
    for path in files:
        if path.suffix in (".bin", ".pt", ".ckpt", ".pkl"):
            raise UserError(f"{path}: pickle weights cannot ship; only safetensors")
        if path.suffix == ".safetensors":
            with safe_open(path, "pt") as f:
                if any(f.get_slice(k).get_dtype() != "F16" for k in f.keys()):
                    raise UserError(f"{path}: not all tensors are fp16")
    total = sum(p.stat().st_size for p in files)
    if total > MAX_BYTES:
        raise UserError(f"{model_dir} is {total / 2**20:.1f} MB; the built-in model must stay ≤ 15 MB")
    return total


def ship(model_dir: str | Path) -> Path:
    from sdexp.models.loading import BUILTIN_DIR

    model_dir = Path(model_dir).resolve()
    total = check_shippable(model_dir)
    target = BUILTIN_DIR / "tiny_shapes"
    staging = target.parent / ".tiny_shapes.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    print(f"shipped {model_dir} ({total / 2**20:.1f} MB) as {target}")
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m sdexp.world.ship MODEL_DIR", file=sys.stderr)
        raise SystemExit(2)
    try:
        ship(sys.argv[1])
    except UserError as err:
        report_and_exit(err)
