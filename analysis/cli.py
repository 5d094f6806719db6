"""`sdexp report FOLDER`: the HTML report of a sweep or a run, from an installed sdexp (not only a checkout)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdexp.cli import arg, subcommand


@subcommand(
    "report",
    help="write the HTML report of a sweep or a run folder: tables, plotly charts, images, failures",
    args=[
        arg("folder", metavar="FOLDER", type=Path, help="a sweep folder (`sdexp sweep`) or a run folder"),
        arg("--out", type=Path, default=None, help="report folder (default FOLDER/report)"),
        arg(
            "--grids",
            action="store_true",
            help="also generate the prompts × trials (sweep) or prompts × checkpoints (run) image grid; "
            "off by default: it costs generation time",
        ),
        arg(
            "--grid-prompt",
            action="append",
            default=None,
            metavar="TEXT",
            help="a prompt of the grid's rows (repeat; default: the run's eval/sample prompts)",
        ),  # fmt: skip
    ],
)
def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import report

    report(args.folder, args.out, grids=args.grids, grid_prompts=args.grid_prompt)
    return 0
