"""Axes, their mistakes, and the labelled layout, without loading a model (a run folder faked on disk)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image, ImageFont

from sdexp.cli import main
from sdexp.errors import UserError
from sdexp.grid.axes import make_axis, parse_axis
from sdexp.grid.build import plan_cells, prompt_axis
from sdexp.grid.render import render_grid, wrap
from sdexp.grid.sources import Target, resolve_target
from sdexp.grid.spec import GenerationSpec

CONFIG = {
    "model": {"name": "tiny", "family": "sd1", "path": None},
    "data": {"prompt": "a photo of {token} toy", "token": "sks"},
    "train": {"sample_steps": 3, "sample_guidance": 5.0, "sample_scheduler": "euler", "resolution": 48,
              "sample_prompts": []},
    "eval": {"prompts": []},
}  # fmt: skip


def fake_run(root, checkpoints=("step-000002", "final")):
    """config.yaml, run.json and checkpoint folders with a (not loadable) lora.safetensors each."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (root / "checkpoints").mkdir()
    steps = {"step-000002": 2, "final": 4}
    for name in checkpoints:
        (root / "checkpoints" / name).mkdir()
        (root / "checkpoints" / name / "lora.safetensors").write_bytes(b"not read before generating")
    run = {"checkpoints": [{"name": n, "step": steps[n]} for n in checkpoints]}
    (root / "run.json").write_text(json.dumps(run))
    return root


def test_a_run_target_starts_from_its_config_and_last_checkpoint(tmp_path):
    target = resolve_target(fake_run(tmp_path / "run"))
    base = target.base
    assert (base.model, base.family, base.steps, base.guidance, base.scheduler) == (
        "tiny",
        "sd1",
        3,
        5.0,
        "euler",
    )
    assert (base.width, base.height) == (48, 48)
    assert base.lora == str(tmp_path / "run" / "checkpoints" / "final" / "lora.safetensors")  # no best/ yet
    assert target.prompts == ["a photo of sks toy"]  # data.prompt with {token} filled in
    assert target.grids_root == tmp_path / "run" / "grids"
    # One of its checkpoints as the target: the run's settings, that checkpoint's weights.
    step2 = resolve_target(tmp_path / "run" / "checkpoints" / "step-000002")
    assert step2.base.lora.endswith("step-000002/lora.safetensors") and step2.base.steps == 3
    assert step2.kind == "checkpoint" and step2.run_dir == tmp_path / "run"  # its grids: LoRA scales


def test_axis_values_edit_the_spec(tmp_path):
    target = resolve_target(fake_run(tmp_path / "run"))
    base = GenerationSpec(model="tiny", lora="x.safetensors")
    prompts = parse_axis("prompt=a red, round thing | a cat", target)
    assert prompts.labels == ["a red, round thing", "a cat"]
    assert [v.apply(base).prompt for v in prompts.values] == ["a red, round thing", "a cat"]
    sizes = parse_axis("size=64, 48x32", target)
    assert [(s.width, s.height) for s in map(lambda v: v.apply(base), sizes.values)] == [(64, 64), (48, 32)]
    assert [v.apply(base).scale for v in parse_axis("scale=0,0.5", target).values] == [0.0, 0.5]
    assert [v.apply(base).guidance for v in parse_axis("guidance=3,7.5", target).values] == [3.0, 7.5]
    ckpts = make_axis("checkpoint", ["all", "base"], target)
    assert ckpts.labels == ["step-000002", "final", "base"]
    specs = [v.apply(base) for v in ckpts.values]
    assert [s.lora and s.lora.split("/")[-2] for s in specs] == ["step-000002", "final", None]
    cells = plan_cells(base, prompts, ckpts)
    assert [(c.row, c.col, c.spec.prompt, c.spec.lora is None) for c in cells][-1] == (1, 2, "a cat", True)


@pytest.mark.parametrize(
    "text, words",
    [
        ("color=red,blue", "unknown axis 'color'"),
        ("seed", "is not KEY=V1,V2"),
        ("seed=one", "'one' is not an integer"),
        ("steps=0", "of at least 1"),
        ("guidance=", "no values"),
        ("size=30", "multiples of 8"),
        ("scheduler=plms", "unknown scheduler 'plms'"),
        ("checkpoint=step-000009", "'step-000009' is not in"),
        ("trial=0", "is not a sweep folder"),
    ],
)
def test_bad_axis_input_names_the_axis_and_what_to_give(tmp_path, text, words):
    target = resolve_target(fake_run(tmp_path / "run"))
    with pytest.raises(UserError, match="--y") as err:
        parse_axis(text, target, "--y")
    assert words in str(err.value)


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["grid", *map(str, argv)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_targets_without_anything_to_show_are_refused(tmp_path, capsys, isolated_cli_state):
    import optuna

    from sdexp.sweep.layout import SweepInfo, default_storage, write_sweep_info

    empty_run = fake_run(tmp_path / "empty", checkpoints=())
    assert "has no checkpoints yet" in _fails([empty_run], capsys)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    write_sweep_info(sweep, SweepInfo("s", "s", default_storage(sweep), ["val_loss"], ["minimize"], 3))
    optuna.create_study(study_name="s", storage=default_storage(sweep)).add_trial(
        optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL)
    )
    capsys.readouterr()  # optuna's own log line
    assert "no COMPLETE trial yet" in _fails([sweep], capsys)
    lora = tmp_path / "x.safetensors"
    lora.write_bytes(b"x")
    assert "--model: " in _fails([lora, "--prompts", "a"], capsys)
    assert "does not exist" in _fails([tmp_path / "nowhere"], capsys)


def test_axes_that_clash_and_busy_folders_are_refused(tmp_path, capsys, isolated_cli_state):
    run = fake_run(tmp_path / "run")
    assert "--x and --scales both choose the columns" in _fails(
        [run, "--x", "seed=1", "--scales", "0,1"], capsys
    )
    assert "both 'seed'" in _fails([run, "--x", "seed=1,2", "--y", "seed=3"], capsys)
    assert "both give the prompts" in _fails([run, "--prompts", "a", "--y", "prompt=b|c"], capsys)
    assert "every cell shares one prompt" in _fails([run, "--prompts", "a", "b", "--y", "seed=1,2"], capsys)
    # Two axes that both choose the weights (as trial x checkpoint would) cannot make a grid.
    target = resolve_target(run)
    with pytest.raises(UserError, match="both set embedding, lora, model"):
        plan_cells(
            target.base, make_axis("checkpoint", ["final"], target), make_axis("checkpoint", ["base"], target)
        )
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "is not an earlier grid" in _fails([run, "--checkpoints", "final", "--out", busy], capsys)
    assert (busy / "notes.txt").read_text() == "mine"
    bare = Target(
        kind="file", path=tmp_path / "x.safetensors", base=GenerationSpec(model="tiny"), base_model="tiny"
    )
    with pytest.raises(UserError, match="--prompts: .* names no prompts"):
        prompt_axis([], bare)


def test_wrap_fits_the_width_breaks_long_words_and_ellipsizes():
    font = ImageFont.load_default(size=14)
    lines = wrap("a photo of sks dog\nsupercalifragilisticexpialidocious on the moon", font, 80)
    assert all(font.getlength(line) <= 80 for line in lines) and len(lines) >= 4
    assert "".join(lines).replace(" ", "") == "aphotoofsksdogsupercalifragilisticexpialidociousonthemoon"
    short = wrap("one two three four five six seven eight nine ten", font, 60, max_lines=2)
    assert len(short) == 2 and short[-1].endswith("...")


def _colours(image) -> set:
    return {tuple(int(v) for v in px) for px in np.asarray(image).reshape(-1, 3)}


def test_render_places_each_cell_where_the_layout_says_and_draws_labels():
    colors = [[(255, 0, 0), (0, 255, 0), (0, 0, 255)], [(9, 9, 9), (200, 100, 0), (0, 120, 120)]]
    images = [[Image.new("RGB", (40, 32), c) for c in row] for row in colors]
    canvas, layout = render_grid(
        images, ["row one", "row two"], ["a", "b", "a long column label"], "prompt", "seed"
    )
    assert canvas.size == (layout.width, layout.height)
    for r, row in enumerate(colors):
        for c, color in enumerate(row):
            x0, y0, x1, y1 = layout.box(r, c, (40, 32))
            assert _colours(canvas.crop((x0, y0, x1, y1))) == {color}
            assert canvas.getpixel((x0 - 1, y0)) == (255, 255, 255)  # the gap around each cell is white
    label_area = canvas.crop((0, layout.top, layout.left, layout.top + 32))
    header = canvas.crop((layout.left, 0, layout.width, layout.top))
    assert len(_colours(label_area)) > 1 and len(_colours(header)) > 1  # text was drawn
