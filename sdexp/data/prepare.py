"""``sdexp prepare``: check a data folder the way training will read it, before any GPU time is spent.

One pass over the folder, one image in memory at a time: decode with the scanner's rules, read
captions, assign sizes/buckets with the dataset's function, check loss masks as training does,
render the training crop with the dataset's transform (for the contact sheet, with what the mask
leaves out tinted), hash for duplicates. The result says whether training can start (exit 0) or
what must be fixed first (exit 2). Nothing is written inside the data folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from sdexp.data.buckets import target_sizes
from sdexp.data.cache import sha256_file
from sdexp.data.captions import caption_path, check_caption_extension, read_caption
from sdexp.data.dataset import augment, item_rng
from sdexp.data.masks import MaskFinder, check_mask, find_mask, load_mask, overlay
from sdexp.data.options import BucketOptions, MaskOptions
from sdexp.data.scan import BadImage, UnusableImage, examine_image, list_folder
from sdexp.data.transforms import (
    MAX_PIXELS,
    SMALL_IMAGE_POLICIES,
    check_crop_args,
    check_pad_color,
    resize_scale,
)
from sdexp.errors import UserError

EXIT_OK, EXIT_FIX = 0, 2
NEAR_BITS = 4  # difference-hash bits two near-duplicates may differ by (of 64)
NEAR_COLOUR = 24  # and the mean per-channel difference of their 8x8 colour thumbnails (of 255)
THUMB_PX = 192
REPORT_MARKER = ".sdexp-prepare-report"  # a folder holding this is ours to overwrite


@dataclass
class PrepareOptions:
    """The data settings a run would use (``data.*``), as prepare's flags give them."""

    resolution: int = 512
    crop: str = "center"
    pad_color: tuple[int, int, int] = (0, 0, 0)
    small_images: str = "upscale"
    buckets: BucketOptions | None = None
    caption_extension: str = ".txt"
    prompt: str | None = None
    skip_bad: bool = False
    seed: int = 0
    max_pixels: int = MAX_PIXELS
    masks: MaskOptions = field(default_factory=MaskOptions)


@dataclass
class Entry:
    """One decodable image: what it is, the caption training uses, and how training fits it."""

    path: Path
    width: int
    height: int
    format: str | None
    notes: list[str]
    caption: str | None  # the text training uses; None = no caption (must be fixed)
    caption_source: str  # sidecar | prompt | missing | empty | unreadable
    target: tuple[int, int]  # (w, h): bucket or resolution square
    scale: float  # resize factor to the target; > 1 = upscaled
    skipped: bool  # left out by data.small_images=skip
    sha256: str
    dhash: int
    colours: bytes = field(repr=False)  # 8x8 RGB thumbnail, for confirming near-duplicates
    thumb: str | None = None  # file name inside the report's thumbnail folder
    caption_error: str | None = None
    mask: str = "none"  # file | alpha | none (no mask) | mismatched | unreadable | off (masks disabled)
    mask_path: Path | None = None
    mask_error: str | None = None


@dataclass
class PrepareResult:
    root: Path
    options: PrepareOptions
    entries: list[Entry] = field(default_factory=list)
    bad: list[BadImage] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)  # caption files without an image
    orphan_masks: list[Path] = field(default_factory=list)  # NAME.mask.png files no image uses
    skipped_dirs: list[tuple[Path, str]] = field(default_factory=list)
    exact_duplicates: list[list[Path]] = field(default_factory=list)
    near_duplicates: list[tuple[Path, Path, int]] = field(default_factory=list)
    report_dir: Path | None = None
    thumbs_dir: str = "thumbs"

    @property
    def trained(self) -> list[Entry]:
        return [e for e in self.entries if not e.skipped]

    @property
    def masked(self) -> list[Entry]:
        return [e for e in self.entries if e.mask in ("file", "alpha")]

    @property
    def unmasked(self) -> list[Entry]:
        """Images without a mask while others have one (each trains on its whole picture)."""
        bad = any(e.mask in ("mismatched", "unreadable") for e in self.entries)
        return [e for e in self.entries if e.mask == "none"] if self.masked or bad else []

    @property
    def upscaled(self) -> list[Entry]:
        return [e for e in self.entries if e.scale > 1.0]

    def problems(self) -> list[str]:
        """What must be fixed before training can start; empty = it can."""
        out, o = [], self.options
        if not self.entries and not self.bad:
            out.append(f"no images found in {self.root}")
            return out
        if self.bad and not o.skip_bad:
            out.append(f"{len(self.bad)} unreadable image(s): fix or remove them, or pass --skip-bad")
        if not self.entries:
            out.append("no readable image left")
        unreadable = [e for e in self.entries if e.caption_source == "unreadable"]
        if unreadable:
            out.append(f"{len(unreadable)} caption file(s) cannot be read: re-save them as UTF-8")
        uncaptioned = [e for e in self.entries if e.caption is None and e.caption_source != "unreadable"]
        if uncaptioned:
            out.append(
                f"{len(uncaptioned)} image(s) without a caption (missing or empty {o.caption_extension}): "
                "write captions or pass --prompt"
            )
        bad_masks = [e for e in self.entries if e.mask in ("mismatched", "unreadable")]
        if bad_masks:
            out.append(
                f"{len(bad_masks)} mask(s) unreadable or not the size of their image: fix them "
                "(or train without masks: data.mask.enabled=false)"
            )
        missing = [e for e in self.entries if e.mask == "none"]
        if o.masks.enabled and o.masks.required and missing:
            out.append(f"{len(missing)} image(s) without a mask (--mask-required): add their masks")
        if self.entries and not self.trained:
            out.append(
                "--small-images skip leaves no image: lower --resolution or use --small-images upscale"
            )
        return out

    @property
    def exit_code(self) -> int:
        return EXIT_FIX if self.problems() else EXIT_OK


def check_options(o: PrepareOptions) -> None:
    check_crop_args(o.resolution, o.crop)
    o.pad_color = check_pad_color(o.pad_color)
    check_caption_extension(o.caption_extension)
    if o.small_images not in SMALL_IMAGE_POLICIES:
        raise UserError(
            f"--small-images must be one of {', '.join(SMALL_IMAGE_POLICIES)}, got {o.small_images!r}"
        )
    if o.buckets is not None and o.buckets.enabled:
        target_sizes([(o.resolution, o.resolution)], o.resolution, o.buckets)  # raises on bad options


def _inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


def open_report_dir(report: Path, root: Path, *, explicit: bool) -> tuple[Path, str]:
    """Create (or reuse a previous) report folder; return it and its thumbnail subfolder's name.

    The default folder may not lie inside the data; an explicit one may, and then its thumbnails
    go to a hidden subfolder, which neither training nor a later scan picks up."""
    report = report.expanduser()
    inside = _inside(report, root)
    if inside and not explicit:
        raise UserError(
            f"the default report folder {report.resolve()} is inside the data folder {root.resolve()}, and prepare "
            "writes nothing there; run from another folder or pass --report DIR"
        )
    if report.exists() and not report.is_dir():
        raise UserError(f"--report: {report} is a file; choose a folder")
    if report.is_dir() and any(report.iterdir()) and not (report / REPORT_MARKER).exists():
        raise UserError(
            f"--report: {report} exists and is not a prepare report; choose a new or empty folder"
        )
    thumbs = ".thumbs" if inside else "thumbs"
    try:
        (report / thumbs).mkdir(parents=True, exist_ok=True)
        for old in (report / thumbs).glob("*.png"):
            old.unlink()
        (report / REPORT_MARKER).touch()
    except OSError as e:
        raise UserError(f"--report: cannot write {report}: {e.strerror or e}; choose another folder") from e
    return report, thumbs


def difference_hash(img: Image.Image) -> int:
    """64-bit dHash: is each pixel of a 9x8 grey thumbnail brighter than its right neighbour.
    Survives resizing and recompression; a few bits change for small edits."""
    small = img.convert("L").resize((9, 8), Image.Resampling.BOX)
    px = small.tobytes()
    bits = 0
    for y in range(8):
        for x in range(8):
            bits = bits << 1 | (px[y * 9 + x] > px[y * 9 + x + 1])
    return bits


def _caption(path: Path, o: PrepareOptions) -> tuple[str | None, str, str | None]:
    """(caption training uses, where it comes from, error) for one image, as ``scan_folder`` decides."""
    prompt = (o.prompt or "").strip() or None
    sidecar = caption_path(path, o.caption_extension)
    try:
        text = read_caption(path, o.caption_extension)
    except UserError as e:
        return None, "unreadable", str(e)
    if text:
        return text, "sidecar", None
    source = "empty" if sidecar.is_file() else "missing"
    return prompt, ("prompt" if prompt and source == "missing" else source), None


def prepare(
    root: str | Path,
    options: PrepareOptions,
    *,
    report_dir: Path | None = None,
    thumbs_dir: str = "thumbs",
    progress: Callable[[int, int], object] | None = None,
) -> PrepareResult:
    """Check every file under ``root`` (read-only). Thumbnails go to ``report_dir/thumbs_dir``."""
    check_options(options)
    root = Path(root).expanduser()
    exclude = [report_dir] if report_dir is not None and _inside(report_dir, root) else []
    m = options.masks
    if m.enabled and m.dir and not Path(m.dir).expanduser().is_dir():
        raise UserError(f"--mask-dir: {m.dir} is not a folder; point it at the folder of masks")
    if m.dir and _inside(Path(m.dir).expanduser(), root):
        exclude.append(Path(m.dir).expanduser())
    finder = MaskFinder(root, m.dir) if m.enabled else None
    listing = list_folder(root, caption_extension=options.caption_extension, setting="DATA", exclude=exclude)
    result = PrepareResult(root, options, skipped_dirs=listing.skipped_dirs, report_dir=report_dir)
    result.thumbs_dir = thumbs_dir
    expected_captions = set()
    for n, path in enumerate(listing.images):
        if progress:
            progress(n, len(listing.images))
        expected_captions.add(caption_path(path, options.caption_extension))
        try:
            decoded = examine_image(path, max_pixels=options.max_pixels)
        except UnusableImage as e:
            result.bad.append(BadImage(path, e.reason))
            continue
        result.entries.append(_entry(path, decoded, options, result, report_dir, thumbs_dir, finder))
    result.orphans = [p for p in listing.captions if p not in expected_captions]
    used_masks = {e.mask_path for e in result.entries}
    result.orphan_masks = [p for p in listing.masks if p not in used_masks]
    by_hash: dict[str, list[Path]] = {}
    for e in result.entries:
        by_hash.setdefault(e.sha256, []).append(e.path)
    result.exact_duplicates = [paths for paths in by_hash.values() if len(paths) > 1]
    firsts = {paths[0] for paths in by_hash.values()}  # one per identical group: no repeated pairs
    result.near_duplicates = near_duplicates([e for e in result.entries if e.path in firsts])
    return result


def _mask(entry: Entry, finder: MaskFinder | None, o: PrepareOptions):
    """Find and check ``entry``'s mask as training would; its MaskRef when usable."""
    if finder is None:
        entry.mask = "off"
        return None
    try:
        ref = find_mask(entry.path, finder, from_alpha=o.masks.from_alpha)
    except Exception as err:  # the image decoded, so a header read failing here is unexpected
        entry.mask, entry.mask_error = "unreadable", f"cannot check its alpha channel: {err}"
        return None
    if ref is None:
        return None
    entry.mask_path = None if ref.alpha else ref.path
    status, entry.mask_error = check_mask(ref, entry.width, entry.height)
    entry.mask = ("alpha" if ref.alpha else "file") if status == "ok" else status
    return ref if status == "ok" else None


def _entry(
    path, decoded, o: PrepareOptions, result: PrepareResult, report_dir, thumbs_dir, finder=None
) -> Entry:
    img = decoded.image
    w, h = img.size
    caption, source, error = _caption(path, o)
    (target,) = target_sizes([(w, h)], o.resolution, o.buckets)
    scale = resize_scale(w, h, target, o.crop)
    skipped = o.small_images == "skip" and scale > 1.0
    entry = Entry(
        path, w, h, decoded.format, decoded.notes(), caption, source, target, scale, skipped,
        sha256=sha256_file(path), dhash=difference_hash(img),
        colours=img.resize((8, 8), Image.Resampling.BOX).tobytes(), caption_error=error,
    )  # fmt: skip
    ref = _mask(entry, finder, o)
    if report_dir is not None:
        index = len(result.trained)  # the dataset index this image will have
        rng = item_rng(o.seed, 0, index)
        shown, _ = augment(img, target, crop=o.crop, flip=False, rng=rng, pad_color=o.pad_color)
        if ref is not None:  # the mask fitted by the same transform and draws: black = not learned
            rng = item_rng(o.seed, 0, index)
            fitted, _ = augment(load_mask(ref).convert("RGB"), target, crop=o.crop, flip=False, rng=rng)
            shown = overlay(shown, fitted.getchannel(0))
        shown.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
        entry.thumb = f"{len(result.entries):05d}.png"
        shown.save(Path(report_dir, thumbs_dir, entry.thumb))
    return entry


def near_duplicates(entries: list[Entry]) -> list[tuple[Path, Path, int]]:
    """Pairs whose difference hashes differ by at most NEAR_BITS bits and whose colours agree,
    excluding byte-identical pairs. Pigeonhole index: two hashes within NEAR_BITS bits agree
    exactly on at least one of NEAR_BITS + 1 bit ranges, so only those candidates are compared."""
    chunks = NEAR_BITS + 1
    edges = [round(i * 64 / chunks) for i in range(chunks + 1)]
    index: dict[tuple[int, int], list[int]] = {}
    pairs: set[tuple[int, int]] = set()
    for j, e in enumerate(entries):
        for c in range(chunks):
            key = (c, (e.dhash >> edges[c]) & ((1 << (edges[c + 1] - edges[c])) - 1))
            for i in index.get(key, ()):
                pairs.add((i, j))
            index.setdefault(key, []).append(j)
    out = []
    for i, j in sorted(pairs):
        a, b = entries[i], entries[j]
        bits = (a.dhash ^ b.dhash).bit_count()
        if (
            bits <= NEAR_BITS
            and a.sha256 != b.sha256
            and _colour_distance(a.colours, b.colours) <= NEAR_COLOUR
        ):
            out.append((a.path, b.path, bits))
    return out


def _colour_distance(a: bytes, b: bytes) -> float:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)
