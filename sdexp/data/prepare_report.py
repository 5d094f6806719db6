"""What ``sdexp prepare`` found, presented: the terminal summary, the JSON, and the HTML page (one
self-contained file beside its thumbnail PNGs).

Every file name and caption comes from the user's folder, so the HTML escapes every one.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from html import escape
from pathlib import Path

from sdexp.atomic import atomic_write_bytes
from sdexp.data.prepare import PrepareResult

# ---------------------------------------------------------------- terminal and JSON

_RATIOS = {
    "1:1": 1,
    "5:4": 5 / 4,
    "4:3": 4 / 3,
    "3:2": 3 / 2,
    "16:10": 1.6,
    "16:9": 16 / 9,
    "2:1": 2,
    "21:9": 21 / 9,
}


def aspect_label(width: int, height: int) -> str:
    """The common ratio within 3% of width:height (portrait written 3:4), else e.g. 2.70:1."""
    ratio = width / height
    for name, value in _RATIOS.items():
        for r, label in ((value, name), (1 / value, ":".join(reversed(name.split(":"))))):
            if abs(math.log(ratio / r)) < 0.03:
                return label
    return f"{ratio:.2f}:1" if ratio >= 1 else f"1:{1 / ratio:.2f}"


def relative_name(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _top(counter: Counter, n: int = 6) -> str:
    items = [f"{k} x{v}" for k, v in counter.most_common(n)]
    more = len(counter) - n
    return ", ".join(items) + (f", ... ({more} more)" if more > 0 else "")


def summary_lines(r: PrepareResult, *, max_listed: int = 20) -> list[str]:
    """The compact terminal summary."""
    o, e = r.options, r.entries
    bucket_word = "on" if o.buckets is not None and o.buckets.enabled else "off"
    lines = [f"sdexp prepare {r.root}  (resolution {o.resolution}, crop {o.crop}, buckets {bucket_word})"]
    skipped = len(e) - len(r.trained)
    lines.append(
        f"  images      {len(r.trained)} to train on, {len(r.bad)} unreadable"
        + (f", {skipped} skipped as small" if skipped else "")
        + (" (skipped: --skip-bad)" if r.bad and o.skip_bad else "")
    )
    if e:
        by_area = sorted(e, key=lambda x: x.width * x.height)
        med = by_area[len(by_area) // 2]
        lines.append(
            f"  sizes       smallest {by_area[0].width}x{by_area[0].height}, median {med.width}x{med.height}, "
            f"largest {by_area[-1].width}x{by_area[-1].height}"
        )
        lines.append(f"  aspect      {_top(Counter(aspect_label(x.width, x.height) for x in e))}")
        lines.append(f"  train size  {_top(Counter(f'{x.target[0]}x{x.target[1]}' for x in r.trained))}")
        sources = Counter(x.caption_source for x in e)
        lines.append(
            "  captions    "
            + ", ".join(
                f"{sources[k]} {k}"
                for k in ("sidecar", "prompt", "missing", "empty", "unreadable")
                if sources[k]
            )
            + (f"; {len(r.orphans)} caption file(s) without an image" if r.orphans else "")
        )
        if r.masked or r.orphan_masks or any(x.mask_error for x in e):
            lines.append("  masks       " + mask_counts(r))
        if r.upscaled:
            scales = [x.scale for x in r.upscaled]
            action = {"upscale": "upscaled", "warn": "upscaled (warned)", "skip": "skipped"}[o.small_images]
            lines.append(
                f"  small       {len(scales)} image(s) {action}: up to x{max(scales):.2f}, "
                f"median x{statistics.median(scales):.2f}"
            )
        if r.exact_duplicates or r.near_duplicates:
            lines.append(
                f"  duplicates  {len(r.exact_duplicates)} group(s) of identical files, "
                f"{len(r.near_duplicates)} near-identical pair(s)"
            )
        animated = sum(any(n.startswith("animated") for n in x.notes) for x in e)
        if animated:
            lines.append(f"  animated    {animated} image(s): first frame used")
    for folder, why in r.skipped_dirs[:max_listed]:
        lines.append(f"  not entered {relative_name(folder, r.root)}: {why}")
    if r.bad:
        lines.append("  unreadable:")
        lines += [f"    {relative_name(b.path, r.root)}: {b.reason}" for b in r.bad[:max_listed]]
        if len(r.bad) > max_listed:
            lines.append(f"    ... and {len(r.bad) - max_listed} more (see the report)")
    uncaptioned = [x for x in e if x.caption is None]
    if uncaptioned:
        lines.append("  without caption:")
        lines += [
            f"    {relative_name(x.path, r.root)}: "
            + (x.caption_error or f"{x.caption_source} {o.caption_extension}")
            for x in uncaptioned[:max_listed]
        ]
    bad_masks = [x for x in e if x.mask_error]
    if bad_masks:
        lines.append("  bad masks:")
        lines += [f"    {relative_name(x.path, r.root)}: {x.mask_error}" for x in bad_masks[:max_listed]]
    if r.unmasked:
        lines.append("  without mask (trained on the whole picture):")
        lines += [f"    {relative_name(x.path, r.root)}" for x in r.unmasked[:max_listed]]
        if len(r.unmasked) > max_listed:
            lines.append(f"    ... and {len(r.unmasked) - max_listed} more (see the report)")
    if r.report_dir is not None:
        lines.append(f"  report      {r.report_dir / 'index.html'}")
    problems = r.problems()
    if problems:
        lines.append("  result      cannot train yet (exit 2):")
        lines += [f"    - {p}" for p in problems]
    else:
        lines.append("  result      ready to train (exit 0)")
    return lines


def mask_counts(r: PrepareResult) -> str:
    """One line: how many images have a usable mask, lack one, or have a bad one."""
    counts = Counter(x.mask for x in r.entries)
    words = {"file": "mask file", "alpha": "from alpha", "none": "without", "mismatched": "mismatched size",
             "unreadable": "unreadable"}  # fmt: skip
    parts = [f"{counts[k]} {w}" for k, w in words.items() if counts[k]]
    if r.orphan_masks:
        parts.append(f"{len(r.orphan_masks)} mask file(s) without an image")
    return ", ".join(parts)


def to_json(r: PrepareResult) -> dict:
    """Everything the summary and the report show, machine-readable."""
    o = r.options
    return {
        "root": str(r.root),
        "options": {
            "resolution": o.resolution,
            "crop": o.crop,
            "pad_color": list(o.pad_color),
            "small_images": o.small_images,
            "caption_extension": o.caption_extension,
            "prompt": o.prompt,
            "skip_bad": o.skip_bad,
            "buckets": vars(o.buckets) if o.buckets is not None else None,
            "masks": vars(o.masks),
        },  # fmt: skip
        "exit_code": r.exit_code,
        "problems": r.problems(),
        "images": [
            {
                "path": str(e.path),
                "width": e.width,
                "height": e.height,
                "format": e.format,
                "train_size": list(e.target),
                "scale": round(e.scale, 4),
                "skipped": e.skipped,
                "caption_source": e.caption_source,
                "caption": e.caption,
                "notes": e.notes,
                "sha256": e.sha256,
                "mask": e.mask,
                "mask_path": str(e.mask_path) if e.mask_path else None,
                "mask_error": e.mask_error,
            }  # fmt: skip
            for e in r.entries
        ],
        "bad": [{"path": str(b.path), "reason": b.reason} for b in r.bad],
        "orphan_captions": [str(p) for p in r.orphans],
        "orphan_masks": [str(p) for p in r.orphan_masks],
        "without_mask": [str(x.path) for x in r.unmasked],
        "not_entered": [{"path": str(p), "reason": why} for p, why in r.skipped_dirs],
        "exact_duplicates": [[str(p) for p in group] for group in r.exact_duplicates],
        "near_duplicates": [{"a": str(a), "b": str(b), "bits": d} for a, b, d in r.near_duplicates],
    }


# ---------------------------------------------------------------- HTML

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; vertical-align: top; }
.sheet { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: 200px; font-size: 12px; word-break: break-all; }
figure img { display: block; max-width: 192px; max-height: 192px; border: 1px solid #999;
  background: repeating-conic-gradient(#ddd 0 25%, #fff 0 50%) 0 0 / 16px 16px; }
.skipped img { opacity: .35; }
.bad { color: #a00; } .ok { color: #070; } .note { color: #666; }
"""


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(r: PrepareResult) -> str:
    """The report page; thumbnails are referenced relative to the page."""
    o = r.options
    rel = lambda p: escape(relative_name(p, r.root))  # noqa: E731
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>sdexp prepare: {escape(str(r.root))}</title><style>{_STYLE}</style></head><body>",
        f"<h1>sdexp prepare</h1><p>{escape(str(r.root))}</p>",
    ]
    problems = r.problems()
    if problems:
        items = "".join(f"<li>{escape(p)}</li>" for p in problems)
        parts.append(f"<h2 class='bad'>Cannot train yet (exit 2)</h2><ul>{items}</ul>")
    else:
        parts.append("<h2 class='ok'>Ready to train (exit 0)</h2>")
    buckets = o.buckets is not None and o.buckets.enabled
    settings = [
        ["resolution", str(o.resolution)], ["crop", escape(o.crop)], ["pad colour", escape(str(o.pad_color))],
        ["small images", escape(o.small_images)], ["buckets", "on" if buckets else "off"],
        ["caption extension", escape(o.caption_extension)], ["prompt", escape(o.prompt or "(none)")],
        ["skip bad", str(o.skip_bad)],
    ]  # fmt: skip
    counts = [
        ["images to train on", str(len(r.trained))], ["unreadable", str(len(r.bad))],
        ["skipped as small", str(len(r.entries) - len(r.trained))], ["upscaled", str(len(r.upscaled))],
        ["caption files without an image", str(len(r.orphans))],
        ["identical groups", str(len(r.exact_duplicates))], ["near-identical pairs", str(len(r.near_duplicates))],
    ]  # fmt: skip
    parts.append("<h2>Settings</h2>" + _table(["setting", "value"], settings))
    parts.append("<h2>Counts</h2>" + _table(["what", "count"], counts))
    if r.bad:
        rows = [[rel(b.path), escape(b.reason)] for b in r.bad]
        parts.append("<h2 class='bad'>Unreadable files</h2>" + _table(["file", "reason"], rows))
    uncaptioned = [e for e in r.entries if e.caption is None or e.caption_source in ("empty", "unreadable")]
    if uncaptioned:
        rows = [
            [rel(e.path), escape(e.caption_error or f"{e.caption_source} {o.caption_extension}"),
             escape(e.caption or "(none: must be fixed)")]
            for e in uncaptioned
        ]  # fmt: skip
        parts.append(
            "<h2>Missing, empty or unreadable captions</h2>" + _table(["image", "caption file", "uses"], rows)
        )
    if r.orphans:
        rows = [[rel(p)] for p in r.orphans]
        parts.append("<h2>Caption files without an image</h2>" + _table(["file"], rows))
    mask_rows = [[rel(e.path), escape(e.mask_error)] for e in r.entries if e.mask_error]
    mask_rows += [[rel(e.path), "no mask: trains on the whole picture"] for e in r.unmasked]
    mask_rows += [[rel(p), "mask file without an image"] for p in r.orphan_masks]
    if mask_rows:
        parts.append(
            f"<h2>Masks</h2><p>{escape(mask_counts(r))}</p>" + _table(["file", "finding"], mask_rows)
        )
    if r.skipped_dirs:
        rows = [[rel(p), escape(why)] for p, why in r.skipped_dirs]
        parts.append("<h2>Folders not entered</h2>" + _table(["folder", "why"], rows))
    if r.exact_duplicates or r.near_duplicates:
        rows = [["identical", "<br>".join(rel(p) for p in group)] for group in r.exact_duplicates]
        rows += [[f"near ({bits} bits)", f"{rel(a)}<br>{rel(b)}"] for a, b, bits in r.near_duplicates]
        parts.append("<h2>Duplicates</h2>" + _table(["kind", "files"], rows))
    if r.upscaled:
        rows = [
            [rel(e.path), f"{e.width}x{e.height}", f"{e.target[0]}x{e.target[1]}", f"x{e.scale:.2f}"]
            for e in sorted(r.upscaled, key=lambda e: -e.scale)
        ]
        parts.append(
            "<h2>Smaller than their training size</h2>"
            + _table(["image", "size", "trained at", "scale"], rows)
        )
    sizes = Counter(f"{e.target[0]}x{e.target[1]}" for e in r.trained)
    aspects = Counter(aspect_label(e.width, e.height) for e in r.entries)
    parts.append(
        "<h2>Training sizes" + (" (buckets)" if buckets else "") + "</h2>"
        + _table(["size", "images"], [[escape(k), str(v)] for k, v in sorted(sizes.items())])
        + "<h2>Aspect ratios</h2>"
        + _table(["ratio", "images"], [[escape(k), str(v)] for k, v in aspects.most_common()])
    )  # fmt: skip
    parts.append(
        "<h2>Contact sheet</h2><p class='note'>Each image as training sees it in epoch 0 "
        "(same transform as the dataset; flips not shown). Where an image has a loss mask, what the "
        "mask leaves out (black) is dimmed and tinted red.</p><div class='sheet'>"
    )
    for e in r.entries:
        src = escape(f"{r.thumbs_dir}/{e.thumb}", quote=True) if e.thumb else ""
        mask_note = {"file": "mask: file", "alpha": "mask: alpha channel"}.get(e.mask)
        notes = "; ".join(
            [*e.notes, *(["skipped: small"] if e.skipped else []), *([mask_note] if mask_note else [])]
        )
        parts.append(
            f"<figure class='{'skipped' if e.skipped else ''}'>"
            + (f"<img src='{src}' alt='{escape(e.path.name, quote=True)}'>" if src else "")
            + f"<figcaption><b>{rel(e.path)}</b><br>{e.width}x{e.height} &rarr; {e.target[0]}x{e.target[1]}"
            + (f" (x{e.scale:.2f})" if e.scale > 1 else "")
            + (f"<br><span class='note'>{escape(notes)}</span>" if notes else "")
            + f"<br>{escape(e.caption or '(no caption)')}</figcaption></figure>"
        )
    parts.append("</div></body></html>\n")
    return "".join(parts)


def write_report(r: PrepareResult) -> Path:
    """Write ``index.html`` into the result's report folder; return its path."""
    if r.report_dir is None:
        raise ValueError("this prepare result was made without a report folder")
    return atomic_write_bytes(Path(r.report_dir, "index.html"), render_html(r).encode("utf-8"))
