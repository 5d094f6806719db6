"""Grids of one run: prompts × checkpoints and prompts × LoRA scales, cell for cell the images
`sdexp generate` makes with the same seed, cut back out of grid.png where grid.json says."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import PROMPTS, SAMPLE, pixels
from PIL import Image

from sdexp.cli import main
from sdexp.generate import generate
from sdexp.grid import prompts_by_checkpoints, prompts_by_scales
from sdexp.png_info import parse_parameters, read_parameters

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _generated(tmp_path, name, lora=None, scale=1.0, **kwargs) -> np.ndarray:
    """The image `sdexp generate` makes with the grid's settings (run's sample guidance/scheduler)."""
    settings = {"prompt": PROMPTS[0], "seed": 0, "guidance": 7.5, "scheduler": "dpmpp_2m", **SAMPLE, **kwargs}
    loras = [(lora, scale)] if lora else []
    (path,) = generate("tiny", loras, out_dir=tmp_path / name, **settings)
    return pixels(path)


def _check_layout(grid_png):
    """grid.png's size is the layout's, and each cell's box in it holds exactly the cell's file."""
    sidecar = json.loads((grid_png.parent / "grid.json").read_text())
    layout = sidecar["layout"]
    whole = pixels(grid_png)
    assert whole.shape == (layout["height"], layout["width"], 3)
    for cell in sidecar["cells"]:
        x0, y0, x1, y1 = cell["box"]
        assert (x1 - x0, y1 - y0) == (SAMPLE["width"], SAMPLE["height"])
        np.testing.assert_array_equal(whole[y0:y1, x0:x1], pixels(grid_png.parent / cell["file"]))
    return sidecar


def test_prompts_by_checkpoints_match_generate_cell_for_cell(tiny_run, tmp_path):
    grid = prompts_by_checkpoints(
        tiny_run, PROMPTS, tmp_path / "ckpts", checkpoints=["all", "base"], notify=lambda *_: None, **SAMPLE
    )
    sidecar = _check_layout(grid)
    assert sidecar["rows"] == {"key": "prompt", "labels": PROMPTS}
    assert sidecar["columns"] == {"key": "checkpoint", "labels": ["step-000002", "final", "base"]}
    cells = {(c["row"], c["col"]): c for c in sidecar["cells"]}
    assert len(cells) == 6 and {c["seed"] for c in cells.values()} == {0}

    step2 = tiny_run / "checkpoints" / "step-000002" / "lora.safetensors"
    final = tiny_run / "checkpoints" / "final" / "lora.safetensors"
    assert cells[(1, 0)]["adapter"] == str(step2) and cells[(0, 1)]["adapter"] == str(final)
    assert cells[(0, 2)]["adapter"] is None and cells[(0, 2)]["model"] == "tiny"
    # The cells are what `sdexp generate` makes with the same LoRA, prompt and seed, bit for bit.
    np.testing.assert_array_equal(
        pixels(grid.parent / cells[(0, 0)]["file"]), _generated(tmp_path, "s2", step2)
    )
    np.testing.assert_array_equal(
        pixels(grid.parent / cells[(1, 1)]["file"]), _generated(tmp_path, "f1", final, prompt=PROMPTS[1])
    )
    base = _generated(tmp_path, "base")
    np.testing.assert_array_equal(pixels(grid.parent / cells[(0, 2)]["file"]), base)
    assert np.abs(pixels(grid.parent / cells[(0, 1)]["file"]) - base).max() > 10  # the LoRA shows

    # Each cell file carries the A1111 parameters grid.json lists for it.
    info = parse_parameters(read_parameters(grid.parent / cells[(1, 0)]["file"]))
    assert info["prompt"] == PROMPTS[1] and cells[(1, 0)]["parameters"] == read_parameters(
        grid.parent / cells[(1, 0)]["file"]
    )
    params = info["params"]
    assert (params["Seed"], params["Steps"], params["Size"], params["Sampler"]) == (
        "0",
        "2",
        "32x32",
        "DPM++ 2M",
    )
    assert params["Lora scales"] == "step-000002: 1"


def test_prompts_by_scales_scale_zero_is_the_base_and_a_lora_file_grid_agrees(
    tiny_run, tmp_path, isolated_cli_state
):
    grid = prompts_by_scales(
        tiny_run, [0, 0.5, 1], PROMPTS[:1], tmp_path / "lib", notify=lambda *_: None, **SAMPLE
    )
    sidecar = _check_layout(grid)
    assert sidecar["columns"]["labels"] == ["scale 0", "scale 0.5", "scale 1"]
    best = str(tiny_run / "best" / "lora.safetensors")
    assert [c["scale"] for c in sidecar["cells"]] == [0.0, 0.5, 1.0]
    assert {c["adapter"] for c in sidecar["cells"]} == {best}
    zero, half, one = (pixels(grid.parent / c["file"]) for c in sidecar["cells"])
    np.testing.assert_array_equal(zero, _generated(tmp_path, "base"))
    np.testing.assert_array_equal(half, _generated(tmp_path, "half", best, 0.5))
    assert np.abs(one - zero).max() > 10 and np.abs(half - one).max() > 0

    # The same LoRA as a file on a named base, through the command line: the same cells.
    out = tmp_path / "cli"
    code = main(["grid", best, "--model", "tiny", "--scales", "0,0.5,1", "--prompts", PROMPTS[0],
                 "--steps", "2", "--width", "32", "--height", "32", "--guidance", "7.5",
                 "--scheduler", "dpmpp_2m", "--out", str(out)])  # fmt: skip
    assert code == 0
    again = json.loads((out / "grid.json").read_text())
    for old, new in zip(sidecar["cells"], again["cells"], strict=True):
        np.testing.assert_array_equal(pixels(grid.parent / old["file"]), pixels(out / new["file"]))
        assert old["parameters"] == new["parameters"]


def test_any_two_settings_seed_by_scheduler_and_a_rerun_replaces_the_grid(
    tiny_run, tmp_path, isolated_cli_state
):
    out = tiny_run / "grids" / "seeds"
    argv = ["grid", str(tiny_run), "--x", "seed=0,5", "--y", "scheduler=euler,dpmpp_2m",
            "--prompts", PROMPTS[0], "--steps", "2", "--width", "32", "--height", "32", "--name", "seeds"]  # fmt: skip
    assert main(argv) == 0
    sidecar = _check_layout(out / "grid.png")
    assert sidecar["rows"]["labels"] == ["euler", "dpmpp_2m"]
    assert sidecar["columns"]["labels"] == ["seed 0", "seed 5"]
    cells = {(c["row"], c["col"]): c for c in sidecar["cells"]}
    assert [cells[(0, c)]["seed"] for c in (0, 1)] == [0, 5]
    best = str(tiny_run / "best" / "lora.safetensors")
    np.testing.assert_array_equal(
        pixels(out / cells[(0, 1)]["file"]), _generated(tmp_path, "e5", best, seed=5, scheduler="euler")
    )
    assert np.abs(pixels(out / cells[(0, 1)]["file"]) - pixels(out / cells[(0, 0)]["file"])).max() > 0

    # A rerun with fewer cells leaves no stale cell behind; the folder is swapped whole.
    argv[3], argv[5] = "seed=3", "scheduler=euler"
    assert main(argv) == 0
    assert sorted(p.name for p in (out / "cells").iterdir()) == ["r00_c00.png"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    with Image.open(out / "grid.png") as image:
        assert image.size == tuple(
            json.loads((out / "grid.json").read_text())["layout"][k] for k in ("width", "height")
        )
