"""Prompts × trials of a 3-trial sweep: one column per COMPLETE trial's best/, each cell the image
`sdexp generate` makes with that trial's best LoRA and the same seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import PROMPTS, RUN, SAMPLE, pixels

from sdexp.cli import main
from sdexp.generate import generate
from sdexp.grid import prompts_by_trials
from sdexp.sweep.definition import parse_definition
from sdexp.sweep.runner import SweepRunner

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
RATES = [5e-2, 2e-2, 1e-2]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    from toy_images import write_demo_images

    root = tmp_path_factory.mktemp("grid_sweep")
    images = write_demo_images(root / "images", n=6)
    overrides = [o for o in RUN if not o.startswith("train.lr=")]
    raw = {
        "name": "g",
        "overrides": overrides,
        "space": {"train.lr": RATES},
        "sampler": "grid",
        "heartbeat_seconds": 1,
    }
    runner = SweepRunner(
        parse_definition(raw), root / "g", extra_overrides=[f"data.dir={images}"], notify=lambda *_: None
    )
    runner.prepare()
    assert runner.run().completed == 3
    return runner.sweep_dir


def test_prompts_by_trials_has_one_column_per_trial_equal_to_generate(sweep_dir, tmp_path):
    grid = prompts_by_trials(sweep_dir, PROMPTS, notify=lambda *_: None, **SAMPLE)
    assert grid == sweep_dir / "grids" / "prompt-x-trial" / "grid.png"
    sidecar = json.loads((grid.parent / "grid.json").read_text())
    layout, cells = sidecar["layout"], sidecar["cells"]
    assert sidecar["rows"]["labels"] == PROMPTS
    labels = sidecar["columns"]["labels"]
    assert [label.split("\n")[0] for label in labels] == ["trial 0", "trial 1", "trial 2"]
    assert sorted(label.split("\n")[1] for label in labels) == sorted(f"lr={lr:.3g}" for lr in RATES)
    assert len(cells) == 2 * 3 and {(c["row"], c["col"]) for c in cells} == {
        (r, c) for r in (0, 1) for c in (0, 1, 2)
    }
    # grid.png: labels left and above, then 2 rows x 3 columns of 32-px cells at the boxes grid.json gives.
    whole = pixels(grid)
    assert whole.shape[:2] == (layout["height"], layout["width"])
    assert layout["height"] >= layout["top"] + 2 * 32 and layout["width"] >= layout["left"] + 3 * 32
    for cell in cells:
        x0, y0, x1, y1 = cell["box"]
        np.testing.assert_array_equal(whole[y0:y1, x0:x1], pixels(grid.parent / cell["file"]))

    images = {}
    for cell in cells:
        trial = cell["col"]
        best = sweep_dir / "trials" / f"{trial:04d}" / "best" / "lora.safetensors"
        assert cell["adapter"] == str(best) and cell["seed"] == 0 and cell["scale"] == 1.0
        (made,) = generate("tiny", [(best, 1.0)], prompt=PROMPTS[cell["row"]], seed=0, guidance=7.5,
                           scheduler="dpmpp_2m", out_dir=tmp_path / f"t{trial}r{cell['row']}", **SAMPLE)  # fmt: skip
        images[(cell["row"], trial)] = pixels(grid.parent / cell["file"])
        np.testing.assert_array_equal(images[(cell["row"], trial)], pixels(made))
    assert np.abs(images[(0, 0)] - images[(0, 2)]).max() > 0  # different trials, different pictures


def test_trial_and_checkpoint_mistakes_are_one_line_and_exit_2(sweep_dir, isolated_cli_state, capsys):
    for argv, words in (
        (["--trials", "7"], "trial 7 is not a COMPLETE trial"),
        (["--checkpoints", "all"], "is not a run folder"),
        (["--x", "trial=0", "--y", "checkpoint=final"], "is not a run folder"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["grid", str(sweep_dir), "--prompts", "a", *argv])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and words in err and len(err.strip().splitlines()) == 1, err
