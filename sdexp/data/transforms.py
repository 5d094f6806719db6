"""Image decoding and geometry shared by scanning, the dataset and ``sdexp prepare``, so all three see
the same pixels: decode (with a size guard), EXIF orientation, any colour mode to RGB, then fit a
target size by cropping (``center``/``random``) or by padding (``none``).
"""

from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps

from sdexp.errors import UserError

CROP_MODES = ("center", "random", "none")  # none = fit inside the target and pad with pad_color
SMALL_IMAGE_POLICIES = ("upscale", "warn", "skip")
# Decompression-bomb guard, ours rather than Pillow's global default: a few-KB file can declare a
# size that needs gigabytes to decode. 100 MP still admits every camera short of medium format.
MAX_PIXELS = 100_000_000
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WHITE = (255, 255, 255, 255)


class ImageTooLarge(ValueError):
    """The declared size is over the pixel limit; raised before any pixel is decoded."""


@dataclass(frozen=True)
class Decoded:
    """An image decoded for training: ``image`` is RGB and upright; the rest says what it was."""

    image: Image.Image
    format: str | None  # Pillow's name: JPEG, PNG, GIF, WEBP ...
    mode: str  # the stored colour mode before conversion (CMYK, I;16, P, ...)
    frames: int = 1  # > 1 for animations; the first frame is used
    orientation: int = 1  # EXIF orientation applied (1 = none); 0 = EXIF unreadable, none applied
    transparent: bool = False  # had transparent pixels (alpha below 255) or a transparent palette entry

    def notes(self) -> list[str]:
        """What decoding changed, in words, for the prepare report."""
        out = []
        if self.frames > 1:
            out.append(f"animated ({self.frames} frames): first frame used")
        if self.orientation == 0:
            out.append("EXIF data unreadable: orientation not applied")
        elif self.orientation != 1:
            out.append(f"EXIF orientation {self.orientation} applied")
        if self.mode == "CMYK":
            out.append("CMYK converted to RGB")
        elif self.mode in ("I", "F") or self.mode.startswith("I;16"):
            out.append(f"high bit depth ({self.mode}) scaled to 8-bit grey")
        if self.transparent:
            out.append("transparency composited on white")
        return out


@dataclass(frozen=True)
class Placement:
    """Where an item's pixels came from; SDXL conditions on both (``original_size``, ``crop_top_left``)."""

    original_size: tuple[int, int]  # (height, width) of the upright source image
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image; (0, 0) when padded
    scale: float  # resize factor applied to the source (> 1: upscaled)
    resized_size: tuple[int, int]  # (height, width) the source was resized to before cropping/padding


def check_crop_args(resolution: int, crop: str) -> None:
    """Raise UserError unless ``resolution`` is a positive int and ``crop`` is a known mode."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0:
        raise UserError(f"resolution must be a positive integer, got {resolution!r}; set e.g. resolution=512")
    if crop not in CROP_MODES:
        raise UserError(
            f"data.crop must be one of {', '.join(CROP_MODES)}, got {crop!r}; set data.crop=center"
        )


def check_pad_color(pad_color) -> tuple[int, int, int]:
    """``pad_color`` as an RGB tuple; UserError unless it is three integers 0..255."""
    values = list(pad_color) if isinstance(pad_color, list | tuple) else None
    if (
        values is None
        or len(values) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values)
    ):
        raise UserError(
            f"data.pad_color must be three integers 0..255 (red, green, blue), got {pad_color!r}; "
            "e.g. data.pad_color=[0,0,0] for black"
        )
    return (values[0], values[1], values[2])


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


def _open_guarded(path: str | Path, max_pixels: int) -> Image.Image:
    """Image.open with sdexp's pixel limit instead of Pillow's warning (or its error past 2x its limit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as e:
            found = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow allows"
            raise ImageTooLarge(_too_large(size, max_pixels)) from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageTooLarge(_too_large(f"{w}x{h} = {w * h:,} pixels", max_pixels))
    return img


def _too_large(size: str, max_pixels: int) -> str:
    return (
        f"too large to decode safely: {size}, over the {max_pixels:,}-pixel limit (decompression-bomb "
        "guard); downscale it, e.g. to 4096 px on the long side"
    )


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not make an otherwise good image unusable
        return 0
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def decode(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> Decoded:
    """Decode ``path`` fully (so corrupt/truncated files raise), first frame only, upright, RGB."""
    with _open_guarded(path, max_pixels) as img:
        img.load()
        frames = int(getattr(img, "n_frames", 1) or 1)
        transparent = "transparency" in img.info or (
            img.mode in _ALPHA_MODES and img.getchannel(len(img.getbands()) - 1).getextrema()[0] < 255
        )
        orientation = _orientation(img)
        upright = ImageOps.exif_transpose(img) if orientation > 1 else img
        rgb = to_rgb(upright)
        if rgb is img:
            rgb = img.copy()  # the file closes with the context
        return Decoded(rgb, img.format, img.mode, frames, orientation, transparent)


def load_rgb(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``path`` fully (so corrupt/truncated files raise), apply EXIF orientation, return RGB."""
    return decode(path, max_pixels=max_pixels).image


def resize_scale(width: int, height: int, target: tuple[int, int], crop: str) -> float:
    """The factor the fit applies: cover the target when cropping, fit inside it when padding."""
    tw, th = target
    if crop == "none":
        return min(tw / width, th / height)
    return max(tw / width, th / height)


def resized_size(width: int, height: int, target: tuple[int, int], crop: str) -> tuple[int, int]:
    """(height, width) the source is resized to before the crop (or the padding) of ``fit``."""
    tw, th = target
    scale = resize_scale(width, height, target, crop)
    if crop == "none":
        return max(1, min(th, round(height * scale))), max(1, min(tw, round(width * scale)))
    return max(th, round(height * scale)), max(tw, round(width * scale))


def fixed_placement(
    width: int, height: int, target: tuple[int, int], crop: str, *, flipped: bool
) -> Placement:
    """The ``Placement`` that ``fit`` (centre crop or padding) and a flip give an upright
    ``width`` × ``height`` source, without decoding it: cached latents still need their geometry
    (SDXL conditions on it). Random crops have no fixed placement."""
    if crop == "random":
        raise ValueError("a random crop has no fixed placement")
    tw, th = target
    rh, rw = resized_size(width, height, target, crop)
    scale = resize_scale(width, height, target, crop)
    if crop == "none":
        return Placement((height, width), (0, 0), scale, (rh, rw))
    top, left = (rh - th) // 2, (rw - tw) // 2
    if flipped:
        left = rw - left - tw
    return Placement((height, width), (top, left), scale, (rh, rw))


def fit(
    img: Image.Image,
    target: tuple[int, int],
    crop: str,
    rng: random.Random,
    pad_color: tuple[int, int, int] = (0, 0, 0),
) -> tuple[Image.Image, Placement]:
    """Fit ``img`` to ``target`` (w, h): resize to cover it and crop (center/random), or resize to fit
    inside it and pad (none). Only the needed region is resampled, so an extreme aspect ratio never
    builds a huge intermediate image. ``rng`` is used only by random crops (two draws: top, left)."""
    tw, th = target
    w, h = img.size
    scale, (rh, rw) = resize_scale(w, h, target, crop), resized_size(w, h, target, crop)
    if crop == "none":
        inner = img if (rw, rh) == (w, h) else img.resize((rw, rh), resample=_resample(scale))
        canvas = Image.new("RGB", (tw, th), tuple(pad_color))
        canvas.paste(inner, ((tw - rw) // 2, (th - rh) // 2))
        return canvas, Placement((h, w), (0, 0), scale, (rh, rw))
    if crop == "center":
        top, left = (rh - th) // 2, (rw - tw) // 2
    else:
        top, left = rng.randint(0, rh - th), rng.randint(0, rw - tw)
    if (rw, rh) == (w, h):
        out = img.crop((left, top, left + tw, top + th))
    else:
        sx, sy = rw / w, rh / h  # per axis, as if the whole image were resized to (rw, rh) first
        box = (left / sx, top / sy, (left + tw) / sx, (top + th) / sy)
        out = img.resize((tw, th), resample=_resample(scale), box=box)
    return out, Placement((h, w), (top, left), scale, (rh, rw))


def _resample(scale: float) -> Image.Resampling:
    return Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC


def resize_and_crop(
    img: Image.Image,
    resolution: int,
    crop: str,
    rng: random.Random,
    pad_color: tuple[int, int, int] = (0, 0, 0),
) -> tuple[Image.Image, tuple[int, int]]:
    """A ``resolution`` square: shorter side resized and cropped, or (crop=none) padded; returns
    (image, (top, left))."""
    check_crop_args(resolution, crop)
    out, placement = fit(img, (resolution, resolution), crop, rng, pad_color)
    return out, placement.crop_top_left


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor [3, H, W] scaled to [-1, 1] (the VAE's input range)."""
    if img.mode != "RGB":
        raise ValueError(f"to_tensor expects an RGB image, got mode {img.mode!r}; call to_rgb first")
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    pixels = data.view(img.height, img.width, 3).permute(2, 0, 1).float()
    return pixels / 127.5 - 1.0
