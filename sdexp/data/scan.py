"""Finds and validates a folder of training images up front, so bad data fails before training starts.

Every unusable file gets a reason a person can act on (what it is, what to do); the folder is
only read, never written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import UnidentifiedImageError

from sdexp.data.captions import caption_path, check_caption_extension, read_caption
from sdexp.data.transforms import MAX_PIXELS, Decoded, ImageTooLarge, decode
from sdexp.errors import UserError

if TYPE_CHECKING:
    from sdexp.data.masks import MaskRef

# What we look for. HEIC/HEIF and JPEG XL are listed although Pillow cannot decode them, so such
# files are reported with what to do instead of being silently left out.
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".heic", ".heif", ".jxl",
)  # fmt: skip
MASK_MARK = ".mask"  # NAME.mask.png is the loss mask of NAME.jpg (sdexp.data.masks), never a training image
MIN_SIDE = 8  # below this an "image" is a tracking pixel or an icon, not a training example
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_CONVERT = "convert it to PNG or JPEG (e.g. `magick '{name}' '{stem}.png'`, or export it from a photo app)"


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
    mask: MaskRef | None = None  # its loss mask, attached by sdexp.data.masks.attach_masks


@dataclass
class Listing:
    """What a folder walk found: image candidates, caption-like files, folders it did not enter."""

    images: list[Path] = field(default_factory=list)
    captions: list[Path] = field(default_factory=list)  # files ending in the caption extension
    masks: list[Path] = field(default_factory=list)  # NAME.mask.<image extension> files
    skipped_dirs: list[tuple[Path, str]] = field(default_factory=list)  # (folder, why)


class UnusableImage(Exception):
    """An image file that cannot be trained on; ``reason`` says why and what to do."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _check_root(root: Path, setting: str) -> None:
    if not root.exists():
        raise UserError(f"image folder {root} does not exist; set {setting} to a folder of images")
    if not root.is_dir():
        raise UserError(
            f"{setting}={root} is a file, not a folder; set {setting} to the folder that holds it"
        )


def is_mask_file(path: str | Path) -> bool:
    """``NAME.mask.png`` (any image extension, any case): a loss mask, not an image to train on."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.stem.lower().endswith(MASK_MARK)


def _is_dir(entry: os.DirEntry) -> bool | None:
    """Follows symlinks; None for a link that cannot be resolved (a loop)."""
    try:
        return entry.is_dir()
    except OSError:
        return None


def _is_broken_link(path: Path) -> bool:
    """A symlink whose target is missing (reported); not one to a pipe or device (opening those blocks)."""
    return path.is_symlink() and not path.exists()


def list_folder(
    root: str | Path, *, caption_extension: str | None = None, setting: str = "data.dir", exclude=()
) -> Listing:
    """Walk ``root`` recursively, sorted, skipping hidden names and the folders in ``exclude``.

    Symlinks are followed, to files and to folders; a folder reached a second time (a symlink
    loop, or two links to one folder) is entered once and listed in ``skipped_dirs``. Broken
    symlinks with an image name are image candidates, so they are reported rather than ignored;
    pipes, sockets and devices are never opened, whatever their name."""
    root = Path(root).expanduser()
    _check_root(root, setting)
    excluded = {os.path.realpath(p) for p in exclude}
    listing = Listing()
    seen: dict[tuple[int, int], Path] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            raise UserError(
                f"cannot list folder {folder}: {err.strerror or err}; fix its permissions or remove it"
            ) from None
        key = (st.st_dev, st.st_ino)
        if key in seen:
            listing.skipped_dirs.append((folder, f"same folder as {seen[key]} (symlink); entered once"))
            continue
        seen[key] = folder
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(folder, entry.name)
            is_dir = _is_dir(entry)
            if is_dir is None:
                listing.skipped_dirs.append((path, "symlink that cannot be resolved (a loop?); not entered"))
            elif is_dir:
                if os.path.realpath(path) not in excluded:
                    subdirs.append(path)
            elif path.suffix.lower() in IMAGE_EXTENSIONS and (path.is_file() or _is_broken_link(path)):
                (listing.masks if is_mask_file(path) else listing.images).append(path)
            elif caption_extension and path.name.endswith(caption_extension) and path.is_file():
                listing.captions.append(path)
        stack.extend(reversed(subdirs))
    listing.images.sort()
    listing.captions.sort()
    listing.masks.sort()
    return listing


def find_images(root: str | Path, *, setting: str = "data.dir", exclude=()) -> list[Path]:
    """Image files under ``root`` (recursive, sorted, hidden files/dirs skipped, symlinks followed
    once; mask files and the folders in ``exclude`` left out)."""
    return list_folder(root, setting=setting, exclude=exclude).images


def _convert(path: Path) -> str:
    return _CONVERT.format(name=path.name, stem=path.stem)


def _sniff(path: Path) -> str | None:
    """Name content Pillow did not identify: an empty file, text, or a format Pillow cannot read."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as err:
        return f"cannot read it: {err.strerror or err}; check its permissions"
    if not head:
        return "empty file (0 bytes); copy it again from its source or remove it"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        name = "HEIC/HEIF" if brand in _HEIF_BRANDS else "AVIF" if brand in (b"avif", b"avis") else None
        if name:
            return f"{name} image, a format Pillow cannot read here; {_convert(path)}"
        return f"ISO media file (brand {brand.decode('latin-1')!r}, e.g. a video), not an image; remove it"
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL "):
        return f"JPEG XL image, a format Pillow cannot read; {_convert(path)}"
    stripped = head.lstrip()
    if stripped.startswith((b"<svg", b"<?xml")) and b"<svg" in head:
        return "SVG (vector) image, which cannot be trained on directly; export it to PNG"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"a text file, not an image (despite its {path.suffix} name); remove or rename it"
    return None


def describe_failure(path: Path, err: BaseException) -> str:
    """Why ``path`` could not be decoded, with what to do about it."""
    if isinstance(err, ImageTooLarge):
        return str(err)
    if isinstance(err, FileNotFoundError) and path.is_symlink():
        return f"broken symbolic link to {os.readlink(path)}; fix the link or remove it"
    if isinstance(err, UnidentifiedImageError):
        return _sniff(path) or (
            "not an image Pillow recognises (corrupt, or an unsupported format); "
            "re-save it as PNG or JPEG, or remove it"
        )
    message = " ".join(str(err).split()) or type(err).__name__
    if "truncated" in message.lower():
        return f"truncated file ({message}): the copy or download was cut short; copy it again or remove it"
    if isinstance(err, OSError) and err.strerror and not isinstance(err, UnidentifiedImageError):
        return f"cannot read it: {err.strerror}; check the file and its permissions"
    return (
        f"corrupt or undecodable ({type(err).__name__}: {message}); re-save it as PNG or JPEG, or remove it"
    )


def examine_image(path: Path, *, max_pixels: int = MAX_PIXELS) -> Decoded:
    """Decode one image as training will; UnusableImage (with a reason) if it cannot be trained on."""
    try:
        decoded = decode(path, max_pixels=max_pixels)
    except Exception as err:  # any decode failure means the file is unusable
        raise UnusableImage(path, describe_failure(path, err)) from None
    w, h = decoded.image.size
    if min(w, h) < MIN_SIDE:
        raise UnusableImage(
            path, f"too small to train on: {w}x{h} px (under {MIN_SIDE} px on a side); remove it"
        )
    return decoded


def check_images(
    paths: list[Path], *, max_pixels: int = MAX_PIXELS
) -> tuple[list[tuple[Path, int, int]], list[BadImage]]:
    """Decode every image fully; return (path, width, height) of good ones and the bad ones with reasons."""
    good, bad = [], []
    for path in paths:
        try:
            img = examine_image(path, max_pixels=max_pixels).image
        except UnusableImage as e:
            bad.append(BadImage(path, e.reason))
        else:
            good.append((path, img.width, img.height))
    return good, bad


def no_images_error(root: Path, setting: str) -> UserError:
    return UserError(
        f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively, "
        f"any case, hidden files skipped); add images or fix {setting}"
    )


def missing_caption_error(uncaptioned: list[Path], root: Path, caption_extension: str) -> UserError:
    first = uncaptioned[0]
    more = f" (and {len(uncaptioned) - 1} more image(s) in {root})" if len(uncaptioned) > 1 else ""
    sidecar = caption_path(first, caption_extension)
    what = f"caption file {sidecar} is empty" if sidecar.is_file() else f"no caption for {first}"
    return UserError(
        f"{what}{more}: write the caption in {sidecar.name} next to the image "
        "or set data.prompt to use one prompt for every image without a caption"
    )


def scan_folder(
    root: str | Path,
    *,
    default_prompt: str | None,
    caption_extension: str = ".txt",
    skip_bad: bool = False,
    warn: Callable[[str], object] = print,
    setting: str = "data.dir",
    max_pixels: int = MAX_PIXELS,
    exclude=(),
) -> list[ImageRecord]:
    """Validate every image and caption under ``root`` (not under the folders in ``exclude``, e.g.
    a mask folder inside it) and return one record per usable image. Read-only."""
    check_caption_extension(caption_extension)
    root = Path(root).expanduser()
    paths = find_images(root, setting=setting, exclude=exclude)
    if not paths:
        raise no_images_error(root, setting)
    good, bad = check_images(paths, max_pixels=max_pixels)
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
        raise missing_caption_error(uncaptioned, root, caption_extension)
    return records
