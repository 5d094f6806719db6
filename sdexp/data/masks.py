"""Loss masks: which pixels of a training image the loss learns from (white) and which it does not
(black), so a person can train one detail of a picture, or a subject without its background.

A mask is ``NAME.mask.png`` beside ``NAME.jpg`` (any image extension, any case), or ``NAME.png``
(or ``NAME.mask.png``) at the same relative path under ``data.mask.dir``, or, with
``data.mask.from_alpha``, the image's own alpha channel. It is a greyscale picture the size of its
image: its brightness (0..255 → 0..1) weights the loss; transparent pixels of a mask file count as
black. The mask is fitted by the dataset's own transform (``sdexp.data.dataset.augment``: resize,
crop, bucket, padding, flip), so it stays aligned with its image; padding counts as black. Masks
are read, never written, and never part of the VAE latents, so the latent cache is unaffected.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image, ImageOps

from sdexp.data.scan import IMAGE_EXTENSIONS, MASK_MARK, ImageRecord
from sdexp.data.transforms import MAX_PIXELS, ImageTooLarge, to_rgb
from sdexp.errors import UserError

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_EXTENSIONS = (".png", *(e for e in IMAGE_EXTENSIONS if e != ".png"))  # preference order
FULL = 255  # a mask value that learns fully (masks travel as uint8)


@dataclass(frozen=True)
class MaskRef:
    """Where an image's mask comes from: a mask file, or (``alpha``) the image file's alpha channel."""

    path: Path
    alpha: bool = False

    def describe(self) -> str:
        return f"the alpha channel of {self.path}" if self.alpha else str(self.path)


class MaskFinder:
    """Finds the mask file of an image (beside it, or under ``mask_dir``), listing each folder
    once and matching names without regard to case."""

    def __init__(self, root: str | Path, mask_dir: str | Path | None = None):
        self.root = Path(root).expanduser()
        self.mask_dir = Path(mask_dir).expanduser() if mask_dir else None
        self._folders: dict[Path, dict[str, str]] = {}

    def _names(self, folder: Path) -> dict[str, str]:
        if folder not in self._folders:
            try:
                names = {n.lower(): n for n in sorted(os.listdir(folder), reverse=True)}
            except OSError:
                names = {}
            self._folders[folder] = names
        return self._folders[folder]

    def _first(self, folder: Path, stems: Sequence[str]) -> Path | None:
        names = self._names(folder)
        for stem in stems:
            for ext in _EXTENSIONS:
                name = names.get(f"{stem}{ext}".lower())
                if name is not None and os.path.isfile(folder / name):
                    return folder / name
        return None

    def find(self, image: Path) -> Path | None:
        """The mask file of ``image``, or None."""
        stem = image.stem
        if self.mask_dir is None:
            return self._first(image.parent, [stem + MASK_MARK])
        try:
            relative = image.parent.relative_to(self.root)
        except ValueError:
            relative = Path()
        return self._first(self.mask_dir / relative, [stem, stem + MASK_MARK])


def has_alpha(path: Path) -> bool:
    """Whether an image file stores transparency (read from its header; no pixels decoded)."""
    with Image.open(path) as img:
        return img.mode in _ALPHA_MODES or "transparency" in img.info


def _upright(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block: the image's decode applies no orientation either
        return img


def load_mask(ref: MaskRef) -> Image.Image:
    """The mask as an upright greyscale (mode L) image; raises on unreadable files."""
    with Image.open(ref.path) as img:
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise ImageTooLarge(f"{w}x{h} is over the {MAX_PIXELS:,}-pixel limit")
        img.load()
        img = _upright(img)
        if ref.alpha:
            return img.convert("RGBA").getchannel("A")
        if img.mode in _ALPHA_MODES or "transparency" in img.info:
            rgba = img.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            return Image.alpha_composite(black, rgba).convert("L")
        return to_rgb(img).convert("L")


def check_mask(ref: MaskRef, width: int, height: int) -> tuple[str, str | None]:
    """(``ok`` | ``mismatched`` | ``unreadable``, what to do) for the mask of a ``width`` × ``height``
    image; the mask is decoded fully, so a truncated file is caught now."""
    try:
        mask = load_mask(ref)
    except Exception as err:  # any decode failure makes the mask unusable
        message = " ".join(str(err).split()) or type(err).__name__
        return "unreadable", f"mask {ref.describe()} cannot be read ({message}); re-save it as PNG"
    if mask.size != (width, height):
        return "mismatched", (
            f"mask {ref.describe()} is {mask.width}x{mask.height} but its image is {width}x{height}; "
            "make the mask the same size as its image"
        )
    return "ok", None


def find_mask(record_path: Path, finder: MaskFinder, *, from_alpha: bool) -> MaskRef | None:
    """The mask of one image: a mask file, else (``from_alpha``) its alpha channel, else None."""
    file = finder.find(record_path)
    if file is not None:
        return MaskRef(file)
    if from_alpha and has_alpha(record_path):
        return MaskRef(record_path, alpha=True)
    return None


def check_mask_dir(options) -> None:
    """Fail on a missing ``data.mask.dir`` before the scan, which would otherwise read a mask folder
    inside the data folder as images."""
    if options.enabled and options.dir and not Path(options.dir).expanduser().is_dir():
        raise UserError(f"data.mask.dir={options.dir} is not a folder; point it at the folder of masks")


def attach_masks(
    records: list[ImageRecord],
    options,
    *,
    root: str | Path,
    warn: Callable[[str], object] = print,
    setting: str = "data.dir",
) -> list[ImageRecord]:
    """``records`` with their masks (``data.mask``: a ``MaskOptions``), every mask checked now: an
    unreadable or wrongly sized mask, or a missing one under ``required``, fails before training."""
    if not options.enabled:
        return list(records)
    check_mask_dir(options)
    finder = MaskFinder(root, options.dir)
    out, problems, missing = [], [], []
    for record in records:
        ref = find_mask(record.path, finder, from_alpha=options.from_alpha)
        if ref is None:
            missing.append(record.path)
        else:
            status, reason = check_mask(ref, record.width, record.height)
            if status != "ok":
                problems.append(f"  {record.path}: {reason}")
        out.append(replace(record, mask=ref))
    if problems:
        raise UserError(
            f"{len(problems)} unusable mask(s) for the images of {setting}; fix them "
            "(`sdexp prepare` lists them) or set data.mask.enabled=false:\n" + "\n".join(problems)
        )
    found = len(out) - len(missing)
    if missing and options.required:
        raise UserError(
            f"{len(missing)} image(s) of {setting} have no mask (data.mask.required=true), "
            f"e.g. {missing[0]}: "
            f"add {missing[0].stem}{MASK_MARK}.png"
            + (f" under {options.dir}" if options.dir else " beside it")
            + " or set data.mask.required=false"
        )
    if options.dir and not found:
        raise UserError(
            f"data.mask.dir={options.dir} holds no mask for any image of {setting} (e.g. none for "
            f"{missing[0]}); a mask has its image's path relative to {finder.root}, as NAME.png"
        )
    if found and missing:
        warn(
            f"data.mask: {found} of {len(out)} image(s) of {setting} have a mask; the other {len(missing)} "
            f"train on their whole picture, e.g. {missing[0]} (data.mask.required=true makes this an error)"
        )
    return out


def mask_tensor(img: Image.Image) -> torch.Tensor:
    """A fitted mask (its first channel) as uint8 [1, H, W], 255 = learn."""
    grey = img if img.mode == "L" else img.getchannel(0)
    data = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8)
    return data.view(1, grey.height, grey.width)


def stack_masks(masks: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """One batch's masks as uint8 [B, 1, H, W], items without one learning everywhere; None when no
    item has a mask (the loss then runs unweighted, exactly as without masks)."""
    shapes = {tuple(m.shape) for m in masks if m is not None}
    if not shapes:
        return None
    if len(shapes) > 1:
        raise ValueError(f"one batch mixes mask sizes {sorted(shapes)}; batch with BucketBatchSampler")
    (shape,) = shapes
    return torch.stack([m if m is not None else torch.full(shape, FULL, dtype=torch.uint8) for m in masks])


def overlay(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The contact sheet's view: the image where the mask learns, dimmed and tinted red where it does not."""
    tinted = Image.blend(image.convert("RGB"), Image.new("RGB", image.size, (200, 0, 0)), 0.55)
    return Image.composite(image.convert("RGB"), tinted, mask.convert("L"))
