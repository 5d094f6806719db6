"""``sdexp caption`` (draft captions with a local model) and ``sdexp tags`` (what the captions say)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdexp.cli import arg, subcommand
from sdexp.errors import UserError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


@subcommand(
    "caption",
    help="write caption sidecars for images that have none, with a local image-to-text model (BLIP, GIT, ...)",
    args=[
        arg("data", metavar="DATA", type=Path, help="folder of images (searched recursively)"),
        arg(
            "--model",
            metavar="PATH",
            help="local folder of a BLIP, BLIP-2, GIT or Florence-2 model (saved with save_pretrained), "
            "or a hub id already in the local HF cache; nothing is downloaded",
        ),
        arg(
            "--prefix",
            default="",
            help='text before every caption, e.g. "sks dog, " (a space is added if missing)',
        ),
        arg(
            "--overwrite",
            action="store_true",
            help="replace existing caption files (default: skip those images)",
        ),
        arg("--caption-extension", default=".txt", metavar="EXT", help="sidecar extension (default .txt)"),
        arg("--batch-size", type=_positive_int, default=8, metavar="N"),
        arg(
            "--max-new-tokens", type=_positive_int, default=40, metavar="N", help="longest caption, in tokens"
        ),
        arg("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if available"),
        arg(
            "--review",
            type=Path,
            default=Path("caption-review"),
            metavar="DIR",
            help="where the HTML review page goes (default ./caption-review; never inside DATA)",
        ),
        arg(
            "--model-prompt",
            default=None,
            metavar="TEXT",
            help="task prompt (Florence-2 default: <DETAILED_CAPTION>)",
        ),
        arg(
            "--allow-pickle",
            action="store_true",
            help="load .bin/.pt weights if no safetensors (can run code)",
        ),
        arg(
            "--trust-remote-code", action="store_true", help="allow the model folder's own Python code to run"
        ),
    ],
)
def cmd_caption(args: argparse.Namespace) -> int:
    from sdexp.data.autocaption import caption_folder, check_model_source, load_captioner, resolve_device
    from sdexp.data.captions import check_caption_extension
    from sdexp.quiet import quiet_libraries

    check_model_source(args.model)  # a mistyped path fails before any image is read
    device = resolve_device(args.device)
    ext = check_caption_extension(args.caption_extension, setting="--caption-extension")
    quiet_libraries()

    def load():
        print(f"loading {args.model} ...", file=sys.stderr)
        return load_captioner(
            args.model,
            device=device,
            trust_remote_code=args.trust_remote_code,
            prompt=args.model_prompt,
            max_new_tokens=args.max_new_tokens,
            allow_pickle=args.allow_pickle,
        )

    report = caption_folder(
        args.data,
        load,
        review_dir=args.review,
        prefix=args.prefix,
        overwrite=args.overwrite,
        caption_extension=ext,
        batch_size=args.batch_size,
        log=lambda line: print(line, file=sys.stderr),
    )
    print(f"wrote {len(report.written)} caption file(s) ({ext})")
    if report.existing:
        print(
            f"skipped {len(report.existing)} image(s) that already have a caption file "
            "(pass --overwrite to replace them)"
        )
    for path, reason in report.unreadable:
        print(f"warning: skipped unreadable image {path}: {reason}", file=sys.stderr)
    if report.unreadable:
        print(f"skipped {len(report.unreadable)} unreadable image(s) (listed above)")
    for path in report.empty:
        print(f"warning: the model returned no caption for {path}; no caption file written", file=sys.stderr)
    print(f"review page: {report.review}")
    return 0


@subcommand(
    "tags",
    help="count the tags in a folder's caption files (most frequent first)",
    args=[
        arg("data", metavar="DATA", type=Path, help="folder of images with caption sidecars"),
        arg("--caption-extension", default=".txt", metavar="EXT"),
        arg("--separator", default=",", help="what separates tags in a caption (default ',')"),
        arg(
            "--top", type=_positive_int, default=None, metavar="N", help="show only the N most frequent tags"
        ),
    ],
)
def cmd_tags(args: argparse.Namespace) -> int:
    from sdexp.data.caption_policy import tag_frequencies
    from sdexp.data.captions import check_caption_extension, read_caption
    from sdexp.data.scan import find_images

    ext = check_caption_extension(args.caption_extension, setting="--caption-extension")
    if not args.separator:
        raise UserError("--separator: must not be empty; pass e.g. --separator ,")
    images = find_images(args.data, setting="DATA")
    captions = [c for c in (read_caption(p, ext) for p in images) if c is not None]
    if not captions:
        raise UserError(
            f"no caption files ({ext}) next to the {len(images)} image(s) in {args.data}; "
            "check --caption-extension, or write captions with `sdexp caption`"
        )
    counts = tag_frequencies(captions, args.separator)
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = rows[: args.top] if args.top else rows
    width = max([3] + [len(tag) for tag, _ in shown])
    print(f"{'tag':<{width}}  {'count':>5}  {'share':>6}")
    for tag, n in shown:
        print(f"{tag:<{width}}  {n:>5}  {n / len(captions):>6.1%}")
    missing = len(images) - len(captions)
    hidden = f"; showing the top {len(shown)}" if len(shown) < len(rows) else ""
    print(
        f"{len(rows)} distinct tag(s) in {len(captions)} caption(s); {missing} image(s) without a caption file"
        f"{hidden}; share = fraction of captions holding the tag"
    )
    return 0
