"""Finds and validates a folder of training images up front, so bad data fails before training starts."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import UnidentifiedImageError

from sdexp.data.captions import caption_path, check_caption_extension, read_caption
from sdexp.data.transforms import load_rgb
from sdexp.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class BadImage:
    path: Path
    reason: str


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    caption: str
    width: int  # after EXIF orientation
    height: int


def _walk_error(err: OSError) -> None:
    raise UserError(f"cannot list folder {err.filename}: {err.strerror}; fix its permissions or remove it")


def find_images(root: str | Path, *, setting: str = "data.dir") -> list[Path]:
    """Image files under ``root`` (recursive, sorted, hidden files/dirs skipped, symlinked dirs not followed)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"image folder {root} does not exist; set {setting} to a folder of images")
    if not root.is_dir():
        raise UserError(
            f"{setting}={root} is a file, not a folder; set {setting} to the folder that holds it"
        )
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_walk_error):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                path = Path(dirpath, name)
                if path.is_file():
                    found.append(path)
    return sorted(found)


def _reason(err: Exception) -> str:
    if isinstance(err, UnidentifiedImageError):
        return "not a readable image (corrupt, empty or unsupported format)"
    return f"{type(err).__name__}: {err}"


def check_images(paths: list[Path]) -> tuple[list[tuple[Path, int, int]], list[BadImage]]:
    """Decode every image fully; return (path, width, height) of good ones and the bad ones with reasons."""
    good, bad = [], []
    for path in paths:
        try:
            img = load_rgb(path)
        except Exception as e:  # any decode failure means the file is unusable
            bad.append(BadImage(path, _reason(e)))
        else:
            good.append((path, img.width, img.height))
    return good, bad


def scan_folder(
    root: str | Path,
    *,
    default_prompt: str | None,
    caption_extension: str = ".txt",
    skip_bad: bool = False,
    warn: Callable[[str], object] = print,
    setting: str = "data.dir",
) -> list[ImageRecord]:
    """Validate every image and caption under ``root`` and return one record per usable image. Read-only."""
    check_caption_extension(caption_extension)
    root = Path(root).expanduser()
    paths = find_images(root, setting=setting)
    if not paths:
        raise UserError(
            f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively, "
            f"any case, hidden files skipped); add images or fix {setting}"
        )
    good, bad = check_images(paths)
    if bad and not skip_bad:
        lines = [f"  {b.path}: {b.reason}" for b in bad]
        raise UserError(
            f"{len(bad)} unreadable image(s) in {root}; fix or remove them, "
            "or set data.skip_bad=true to skip them:\n" + "\n".join(lines)
        )
    if bad:
        warn(
            f"warning: skipping {len(bad)} unreadable image(s) in {root} (data.skip_bad=true), e.g. "
            f"{bad[0].path}: {bad[0].reason}"
        )
    if not good:
        raise UserError(
            f"all {len(bad)} image(s) in {root} are unreadable; fix them or point {setting} elsewhere"
        )

    prompt = (default_prompt or "").strip() or None
    records, uncaptioned = [], []
    for path, width, height in good:
        caption = read_caption(path, caption_extension) or prompt
        if caption is None:
            uncaptioned.append(path)
        else:
            records.append(ImageRecord(path, caption, width, height))
    if uncaptioned:
        first = uncaptioned[0]
        more = f" (and {len(uncaptioned) - 1} more image(s) in {root})" if len(uncaptioned) > 1 else ""
        raise UserError(
            f"no caption for {first}{more}: add {caption_path(first, caption_extension).name} next to it "
            "or set data.prompt to use one prompt for every image without a caption file"
        )
    return records
