"""Whole models out: a base, a full fine-tune checkpoint, or a base with LoRAs merged in, as a
diffusers folder or as one original-layout ``.safetensors`` that AUTOMATIC1111 and ComfyUI load."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sdexp.errors import UserError

FORMATS = ("diffusers", "single-file")


def check_destination(out: Path, fmt: str) -> None:
    """Nothing is overwritten: a folder must be new or empty, a file new and named .safetensors."""
    if fmt == "single-file":
        if out.suffix != ".safetensors":
            raise UserError(f"OUT: {out} must end in .safetensors for --format single-file")
        if out.exists():
            raise UserError(f"OUT: {out} exists; choose a new file name")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"OUT: {out} exists and is not empty; choose a new folder")


def merge_loras(base, loras: list[tuple[str | Path, float]]) -> None:
    """Fuse LoRAs (kohya or diffusers files, each with its scale) into the base's weights."""
    from sdexp.generate import check_loras, load_loras

    specs = check_loras(loras)
    pipe = base.pipeline()
    load_loras(pipe, specs, base.family)
    pipe.fuse_lora(adapter_names=[s.name for s in specs], lora_scale=1.0)
    pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go


def export_model(
    src: str | Path,
    out: str | Path,
    *,
    fmt: str = "diffusers",
    dtype: str = "fp32",
    loras: list[tuple[str | Path, float]] = (),
    family: str = "auto",
    allow_pickle: bool = False,
) -> Path:
    """Write ``src`` (a built-in name, a folder or a file) to ``out`` in ``fmt``, weights in ``dtype``."""
    from sdexp.models.checkpoint_file import write_base_file
    from sdexp.models.loading import DTYPES, load_base

    if fmt not in FORMATS:
        raise UserError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    check_destination(out, fmt)
    base = load_base(src, family=family, allow_pickle=allow_pickle)  # fp32: merging and casting happen once
    if loras:
        merge_loras(base, list(loras))
    torch_dtype = DTYPES[dtype]
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "single-file":
        return write_base_file(base, out, dtype=torch_dtype)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        pipe = base.pipeline()
        pipe.to(torch_dtype)
        pipe.save_pretrained(staging, safe_serialization=True)
        os.replace(staging, out)  # atomic; replaces an empty folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
