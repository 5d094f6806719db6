"""Image loading and augmentation shared by scanning and the dataset, so both see the same pixels."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image, ImageOps

from sdexp.errors import UserError

CROP_MODES = ("center", "random")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WHITE = (255, 255, 255, 255)


def check_crop_args(resolution: int, crop: str) -> None:
    """Raise UserError unless ``resolution`` is a positive int and ``crop`` is a known mode."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0:
        raise UserError(f"resolution must be a positive integer, got {resolution!r}; set e.g. resolution=512")
    if crop not in CROP_MODES:
        raise UserError(
            f"data.crop must be one of {', '.join(CROP_MODES)}, got {crop!r}; set data.crop=center"
        )


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer or float greyscale into 8-bit instead of clipping it to white."""
    if img.mode.startswith("I;16"):
        img = img.convert("I")
    _, hi = img.getextrema()
    if img.mode == "F" and hi <= 1.0:
        scale = 255.0
    elif hi <= 255:
        scale = 1.0
    elif hi <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / hi
    return img.point(lambda v: v * scale).convert("L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels become white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _high_depth_to_l(img).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully (so corrupt/truncated files raise), apply EXIF orientation, return RGB."""
    with Image.open(path) as img:
        img.load()
        upright = ImageOps.exif_transpose(img)
        return to_rgb(upright)


def resize_and_crop(
    img: Image.Image, resolution: int, crop: str, rng: random.Random
) -> tuple[Image.Image, tuple[int, int]]:
    """Resize the shorter side to ``resolution`` and cut a square; returns (image, (top, left))."""
    check_crop_args(resolution, crop)
    w, h = img.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (new_w, new_h) != (w, h):
        resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
        img = img.resize((new_w, new_h), resample=resample)
    if crop == "center":
        top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    else:
        top, left = rng.randint(0, new_h - resolution), rng.randint(0, new_w - resolution)
    return img.crop((left, top, left + resolution, top + resolution)), (top, left)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor [3, H, W] scaled to [-1, 1] (the VAE's input range)."""
    if img.mode != "RGB":
        raise ValueError(f"to_tensor expects an RGB image, got mode {img.mode!r}; call to_rgb first")
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    pixels = data.view(img.height, img.width, 3).permute(2, 0, 1).float()
    return pixels / 127.5 - 1.0
