"""SVG line charts of metrics.jsonl (the figures in docs/)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from analysis.svg_chart import line_chart, main, series_from_metrics

NS = "{http://www.w3.org/2000/svg}"


def test_metrics_keys_become_polylines(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 0, "val/loss": 1.0},
        {"step": 10, "train/loss": 0.5},
        {"step": 20, "train/loss": 0.25, "val/loss": 0.3},
    ]
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    series = series_from_metrics(metrics, ["train/loss", "val/loss", "absent"])
    assert series == {"train/loss": [(10.0, 0.5), (20.0, 0.25)], "val/loss": [(0.0, 1.0), (20.0, 0.3)]}
    out = tmp_path / "chart.svg"
    assert main([str(out), str(metrics), "train/loss", "val/loss", "--logy", "--title", "a < b"]) == 0
    root = ET.fromstring(out.read_text())
    lines = root.findall(f"{NS}polyline")
    assert len(lines) == 2
    first = [tuple(map(float, p.split(","))) for p in lines[0].get("points").split()]
    assert first[0][0] < first[1][0] and first[0][1] < first[1][1]  # later step: right; lower loss: lower


def test_nothing_to_draw_is_an_error():
    with pytest.raises(ValueError):
        line_chart({"a": [(1.0, -1.0)]}, logy=True)
