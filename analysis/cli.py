"""`sdexp report SWEEP_DIR`: the sweep's HTML report, from an installed sdexp (not only a checkout)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdexp.cli import arg, subcommand


@subcommand(
    "report",
    help="write a sweep's HTML report: trials, importances, charts, samples, failed trials' logs",
    args=[
        arg("sweep_dir", metavar="SWEEP_DIR", type=Path, help="a folder `sdexp sweep` wrote"),
        arg("--out", type=Path, default=None, help="report folder (default SWEEP_DIR/report)"),
    ],
)
def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import report

    report(args.sweep_dir, args.out)
    return 0
