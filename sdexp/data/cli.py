"""``sdexp prepare DATA``: check a data folder before training (listed in sdexp.cli.COMMAND_MODULES)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdexp.cli import arg, subcommand
from sdexp.errors import UserError

DEFAULT_REPORT = Path("prepare-report")


def _pad_color(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise argparse.ArgumentTypeError(f"expected R,G,B with each 0..255, such as 0,0,0; got {text!r}")
    return values  # type: ignore[return-value]


@subcommand(
    "prepare",
    help="check a data folder as training will read it: bad files, captions, sizes, buckets, duplicates",
    args=[
        arg("data", metavar="DATA", type=Path, help="the image folder (read only; nothing is written in it)"),
        arg("--resolution", type=int, default=512, help="training resolution (default 512)"),
        arg(
            "--crop",
            default="center",
            choices=["center", "random", "none"],
            help="data.crop (default center)",
        ),
        arg(
            "--pad-color",
            type=_pad_color,
            default=(0, 0, 0),
            metavar="R,G,B",
            help="data.pad_color for --crop none",
        ),
        arg(
            "--small-images",
            default="upscale",
            choices=["upscale", "warn", "skip"],
            help="data.small_images: images smaller than their training size (default upscale)",
        ),
        arg("--buckets", action="store_true", help="aspect-ratio buckets (data.buckets.enabled=true)"),
        arg("--bucket-step", type=int, default=64, metavar="PX", help="data.buckets.step (default 64)"),
        arg(
            "--min-bucket",
            type=int,
            default=256,
            metavar="PX",
            help="data.buckets.min_resolution (default 256)",
        ),
        arg(
            "--max-bucket",
            type=int,
            default=1024,
            metavar="PX",
            help="data.buckets.max_resolution (default 1024)",
        ),
        arg("--bucket-no-upscale", action="store_true", help="data.buckets.no_upscale"),
        arg(
            "--caption-extension",
            default=".txt",
            metavar="EXT",
            help="caption sidecar extension (default .txt)",
        ),
        arg("--prompt", default=None, help="data.prompt: caption of images without a caption file"),
        arg("--skip-bad", action="store_true", help="data.skip_bad: train without the unreadable files"),
        arg("--seed", type=int, default=0, help="train.seed (decides random crops on the contact sheet)"),
        arg(
            "--mask-dir",
            type=Path,
            default=None,
            metavar="DIR",
            help="data.mask.dir: loss masks in a folder mirroring DATA (default: NAME.mask.png beside each image)",
        ),
        arg("--mask-from-alpha", action="store_true", help="data.mask.from_alpha: alpha channels are masks"),
        arg("--mask-required", action="store_true", help="data.mask.required: every image needs a mask"),
        arg("--no-masks", action="store_true", help="data.mask.enabled=false: ignore mask files"),
        arg(
            "--report",
            type=Path,
            default=None,
            metavar="DIR",
            help=f"HTML report folder (default ./{DEFAULT_REPORT}; must lie outside DATA unless given)",
        ),
        arg("--no-report", action="store_true", help="no HTML report or thumbnails (faster)"),
        arg("--json", type=Path, default=None, metavar="FILE", help="also write the findings as JSON"),
    ],
)
def cmd_prepare(args: argparse.Namespace) -> int:
    from sdexp.atomic import write_json_atomic
    from sdexp.data.options import BucketOptions, MaskOptions
    from sdexp.data.prepare import PrepareOptions, open_report_dir, prepare
    from sdexp.data.prepare_report import summary_lines, to_json, write_report
    from sdexp.data.scan import list_folder

    root = args.data.expanduser()
    list_folder(root, setting="DATA")  # a missing or file DATA fails before anything is written
    buckets = BucketOptions(
        enabled=args.buckets,
        min_resolution=args.min_bucket,
        max_resolution=args.max_bucket,
        step=args.bucket_step,
        no_upscale=args.bucket_no_upscale,
    )
    options = PrepareOptions(
        resolution=args.resolution,
        crop=args.crop,
        pad_color=args.pad_color,
        small_images=args.small_images,
        buckets=buckets if args.buckets else None,
        caption_extension=args.caption_extension,
        prompt=args.prompt,
        skip_bad=args.skip_bad,
        seed=args.seed,
        masks=MaskOptions(
            enabled=not args.no_masks,
            dir=str(args.mask_dir.expanduser()) if args.mask_dir else None,
            required=args.mask_required,
            from_alpha=args.mask_from_alpha,
        ),
    )
    if args.buckets:
        from sdexp.data.buckets import check_bucket_options

        try:
            check_bucket_options(buckets, args.resolution)
        except UserError as e:  # name the flags, not the config keys
            raise UserError(_flag_names(str(e))) from None
    report_dir, thumbs = None, "thumbs"
    if not args.no_report:
        report_dir, thumbs = open_report_dir(
            args.report or DEFAULT_REPORT, root, explicit=args.report is not None
        )
    progress = _progress if sys.stderr.isatty() else None
    result = prepare(root, options, report_dir=report_dir, thumbs_dir=thumbs, progress=progress)
    if progress:
        print("\r\033[K", end="", file=sys.stderr)
    if report_dir is not None:
        write_report(result)
    if args.json is not None:
        write_json_atomic(args.json.expanduser(), to_json(result))
    print("\n".join(summary_lines(result)))
    return result.exit_code


def _progress(done: int, total: int) -> None:
    if done % 25 == 0:
        print(f"\rchecking {done}/{total} images", end="", file=sys.stderr, flush=True)


def _flag_names(message: str) -> str:
    for key, flag in (
        ("data.buckets.min_resolution", "--min-bucket"),
        ("data.buckets.max_resolution", "--max-bucket"),
        ("data.buckets.step", "--bucket-step"),
        ("data.buckets", "--buckets"),
    ):
        message = message.replace(key, flag)
    return message
