"""Line charts as standalone SVG: figures for docs/ and the HTML report without a plotting library.

python -m analysis.svg_chart OUT.svg RUN/metrics.jsonl train/loss val/loss [--title T] [--logy]
"""

from __future__ import annotations

import argparse
import json
import math
from html import escape
from pathlib import Path

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """``n`` evenly spaced axis ticks from ``lo`` to ``hi`` (one tick for an empty range)."""
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def y_gridline(left: float, pw: float, y: float, value: float) -> list[str]:
    """A horizontal grid line at pixel row ``y`` labelled ``value`` on the left axis."""
    return [
        f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>',
        f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{value:.3g}</text>',
    ]


def axis_titles(
    left: float, top: float, pw: float, ph: float, height: float, xlabel: str, ylabel: str
) -> list[str]:
    """The x title under the plot and the y title turned along the left edge."""
    return [
        f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>',
        f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">'
        f"{escape(ylabel)}</text>",
    ]


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    *,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "",
    logy: bool = False,
    width: int = 640,
    height: int = 360,
) -> str:
    """An SVG document drawing each named series of (x, y) points as a polyline, with axes and a legend."""
    left, right, top, bottom = 64, 16, 32, 44
    points = [(x, y) for pts in series.values() for x, y in pts if not logy or y > 0]
    if not points:
        raise ValueError("no points to draw")
    fy = (lambda y: math.log10(y)) if logy else (lambda y: y)
    xs, ys = [p[0] for p in points], [fy(p[1]) for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return top + ph - (fy(y) - y0) / (y1 - y0) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for t in ticks(x0, x1):
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{t:.4g}</text>')
    for t in ticks(y0, y1):
        out += y_gridline(left, pw, top + ph - (t - y0) / (y1 - y0) * ph, 10**t if logy else t)
    out += axis_titles(left, top, pw, ph, height, xlabel, ylabel)
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts if not logy or y > 0)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        ly = top + 14 + 14 * i
        out.append(
            f'<line x1="{left + pw - 150}" x2="{left + pw - 130}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>'
        )
        out.append(f'<text x="{left + pw - 126}" y="{ly}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def series_from_metrics(path: str | Path, keys: list[str]) -> dict[str, list[tuple[float, float]]]:
    """(step, value) pairs of each key in a run's metrics.jsonl."""
    series: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        for k in keys:
            if k in record:
                series[k].append((float(record["step"]), float(record[k])))
    return {k: v for k, v in series.items() if v}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw metrics.jsonl keys over steps as an SVG line chart.")
    parser.add_argument("out", type=Path)
    parser.add_argument("metrics", type=Path)
    parser.add_argument("keys", nargs="+")
    parser.add_argument("--title", default="")
    parser.add_argument("--ylabel", default="")
    parser.add_argument("--logy", action="store_true")
    args = parser.parse_args(argv)
    series = series_from_metrics(args.metrics, args.keys)
    args.out.write_text(line_chart(series, title=args.title, ylabel=args.ylabel, logy=args.logy))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
