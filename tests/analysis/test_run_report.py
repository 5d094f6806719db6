"""The run page (`sdexp report RUN_DIR`) and the opt-in grids, from fake folders: no torch needed."""

from __future__ import annotations

import json
import re
import sys
import types

import pytest
import yaml
from PIL import Image

from analysis.run_report import write_run_report

STEPS = (0, 2, 4)


def body(html: str) -> str:
    return html.split("</head>", 1)[1]


@pytest.fixture
def run_dir(tmp_path):
    """A run folder like a finished run leaves: config naming its data, metrics, best.json, samples."""
    data = tmp_path / "photos"
    (data / "sub").mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (300, 200), (30 * i, 0, 0)).save(data / "sub" / f"img-{i}.png")
    Image.new("L", (300, 200), 255).save(data / "sub" / "img-0.mask.png")  # not a training image
    (data / "notes.txt").write_text("not an image")
    run = tmp_path / "run"
    folder = run / "samples" / "eval_subject"
    folder.mkdir(parents=True)
    config = {"model": {"name": "tiny"}, "method": {"name": "lora", "rank": 4},
              "data": {"dir": str(data), "prompt": "a <sks> toy"}, "train": {"lr": 1e-3, "steps": 4}}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "run.json").write_text(json.dumps({"status": "finished", "steps": 4, "stop_reason": "max_steps"}))
    rows = [{"step": s, "train/loss": 1 - s / 10, "val/loss": 1.2 - s / 10, "objective/subject": s / 10,
             "objective/subject/violation": 0.0, "eval/clip_i": s / 10} for s in STEPS]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "tor')
    history = [{"step": s, "checkpoint": None if s == 0 else f"step-{s:06d}", "objectives": {"subject": s / 10},
                "feasible": True} for s in STEPS]  # fmt: skip
    best = {"step": 4, "checkpoint": "step-000004", "objective": {"name": "subject", "direction": "maximize"},
            "objectives": {"subject": 0.4}, "feasible": True, "beats_base": True,
            "metrics": {"eval/clip_i": 0.4}, "base": {"metrics": {"eval/clip_i": 0.0}}, "history": history}  # fmt: skip
    (run / "best.json").write_text(json.dumps(best))
    with (folder / "index.jsonl").open("w") as f:
        for s in STEPS:
            files = [f"step-{s:06d}-0.png"]
            Image.new("RGB", (16, 16), (s * 40, 90, 0)).save(folder / files[0])
            f.write(
                json.dumps({"step": s, "key": "eval/subject", "files": files, "captions": ["a <sks> toy"]})
                + "\n"
            )
    return run


def test_a_run_gets_its_page_with_config_scores_curves_and_images(run_dir, cli):
    proc = cli(["-m", "sdexp.cli", "report", str(run_dir)])
    assert proc.returncode == 0, proc.stderr
    index = run_dir / "report" / "index.html"
    assert proc.stdout.strip() == f"report: {index}"
    html = body(index.read_text())
    assert "<h1>Run run</h1>" in html and "max_steps" in html
    assert '<th class="l">method.rank</th><td class="l">4</td>' in html and "a &lt;sks&gt; toy" in html
    scores = html.split("<h3>Scores</h3>")[1].split("</table>")[0]
    assert re.search(r'eval/clip_i</td><td data-v="0.4">0.4</td><td data-v="0.0">0</td>', scores)
    assert html.count('<tr class="best">') == 1  # step 4 in the history of scored checkpoints
    plots = re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', html)
    assert len(plots) == 4  # objective/subject, train/loss, val/loss, eval/clip_i (no violation curve)
    srcs = re.findall(r'<img src="([^"]+)"', html)
    evals = [s for s in srcs if "eval_subject" in s]
    trains = [s for s in srcs if "-train-" in s]
    assert len(evals) == 3 and len(trains) == 6  # every scored step; the first six training images
    assert all((index.parent / s).is_file() for s in srcs)
    assert max(Image.open(index.parent / trains[0]).size) == 160  # a thumbnail, not the 300 px original
    assert "Grid: not made (pass --grids" in html


def test_a_failed_run_shows_its_error_and_the_end_of_its_log(run_dir):
    (run_dir / "run.json").write_text(
        json.dumps({"status": "failed", "error": "FloatingPointError: loss is nan"})
    )
    (run_dir / "run.log").write_text(
        "".join(f"line {i}\n" for i in range(40)) + "FloatingPointError: loss is nan\n"
    )
    html = body(write_run_report(run_dir).read_text())
    failed = html.split("<h2>Failed</h2>")[1].split("<h2>")[0]
    assert "FloatingPointError: loss is nan" in failed and "line 39" in failed and "line 20" not in failed


def test_grids_are_embedded_when_asked_and_a_failing_grid_is_one_line(run_dir, monkeypatch):
    calls = []

    def by_checkpoints(target, prompts, out_dir, **_):
        calls.append((target, prompts))
        out_dir.mkdir(parents=True)
        Image.new("RGB", (40, 20), "white").save(out_dir / "grid.png")
        return out_dir / "grid.png"

    fake = types.ModuleType("sdexp.grid")
    fake.prompts_by_checkpoints = by_checkpoints
    monkeypatch.setitem(sys.modules, "sdexp.grid", fake)
    html = body(write_run_report(run_dir, grids=True, grid_prompts=["a cat"]).read_text())
    assert calls == [(run_dir, ["a cat"])]
    assert '<img class="grid" src="grids/prompt-x-checkpoints/grid.png"' in html
    assert (run_dir / "report" / "grids" / "prompt-x-checkpoints" / "grid.png").is_file()

    def broken(*_, **__):
        raise RuntimeError("the run has no checkpoints\nat all")

    fake.prompts_by_checkpoints = broken
    html = body(write_run_report(run_dir, grids=True).read_text())
    assert "Grid: not made: RuntimeError: the run has no checkpoints at all" in html
    monkeypatch.setitem(sys.modules, "sdexp.grid", None)  # the package is not there: import fails
    html = body(write_run_report(run_dir, grids=True).read_text())
    assert "Grid: not made: the sdexp.grid package is not available" in html
    assert "<h2>Curves</h2>" in html  # the rest of the page is still written
