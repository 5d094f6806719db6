"""Every shipped configuration runs end to end: each method × eval preset in each precision that runs
on a CPU, each model preset (the SD ones from a checkpoint file of a tiny model of their family),
each logger, and each sweep in `sweeps/` with its own precision, method and eval preset.

Globbed from `conf/` and `sweeps/` (tests/e2e/shipped.py), so a new file is tested the day it lands.
Runs here are in-process (one model load, no interpreter start-up) and shrunk only in steps, images
and trials. A suite that ran only hand-picked fp32 configurations passed while every bf16 sweep
failed at its first scoring.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from shipped import (
    CONF,
    DATA_PROMPT,
    JUDGE,
    METHOD_INPUTS,
    STAND_INS,
    SWEEP_EVAL,
    cpu_stand_ins,
    model_family,
    options,
    shipped_sweeps,
    shrink_sweep,
    small_run,
    sweep_model,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
PRECISIONS = ("no", "bf16")  # fp16 needs a GPU


@pytest.fixture(scope="module")
def dog(tmp_path_factory) -> Path:
    """Five photos with sidecar captions, as a user brings them."""
    from toy_images import write_demo_images

    folder = write_demo_images(tmp_path_factory.mktemp("data") / "dog", n=5)
    for image in folder.glob("*.png"):
        image.with_suffix(".txt").write_text(DATA_PROMPT)
    return folder


@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory) -> dict[str, Path]:
    """Each family's stand-in written as one .safetensors, the form users' models come in."""
    from sdexp.export.model_files import export_model

    out = tmp_path_factory.mktemp("checkpoints")
    return {
        family: export_model(tiny, out / f"{tiny}.safetensors", fmt="single-file")
        for family, tiny in STAND_INS.items()
    }


def _run(overrides: list[str], run_dir: Path):
    from sdexp.entry import compose_run_config
    from sdexp.run import train_run

    cfg = compose_run_config(overrides)
    result = train_run(cfg, run_dir, notify=lambda *_: None)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return cfg, result, rows


def _scored(rows: list[dict], step: int) -> dict:
    merged = {}
    for row in rows:
        if row["step"] == step and any(k.startswith("eval/") for k in row):
            merged.update(row)
    return merged


MATRIX = [(m, e, "no") for m in options("method") for e in options("eval")] + [
    (m, "default", p) for m in options("method") for p in PRECISIONS if p != "no"
]


@pytest.mark.parametrize("method,eval_preset,precision", MATRIX, ids=lambda v: str(v))
def test_method_eval_precision(method, eval_preset, precision, dog, tmp_path):
    """Every method × eval preset pair, and every method in every precision a CPU runs (bf16 also
    runs in every shipped sweep below, with their own eval presets)."""
    overrides = [
        "model=tiny_shapes",
        f"method={method}",
        f"eval={eval_preset}",
        f"train.mixed_precision={precision}",
        f"data.dir={dog}",
        *METHOD_INPUTS.get(method, []),
        *small_run(method),
    ]
    cfg, result, rows = _run(overrides, tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "finished" and result.steps == 2
    final = tmp_path / "run" / "checkpoints" / "final"
    assert final.is_dir() and any(final.iterdir())
    if not cfg.eval.enabled:
        assert not any(k.startswith("eval/") for row in rows for k in row)
        return
    for step in (0, 2):  # the base and the final checkpoint are scored
        scored = _scored(rows, step)
        assert "eval/clip_i" in scored, (step, sorted(scored))
        # Forgetting is scored by default: derived prior prompts when a preset names none.
        assert {"eval/forgetting/clip_t_change", "eval/forgetting/fid"} <= set(scored), sorted(scored)
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["step"] == 2 and best["prior_prompts"]["prompts"]
    if method == "dreambooth" and cfg.eval.prior_prompts == ["a photo of dog"]:  # no preset gave its own
        assert best["prior_prompts"]["prompts"] == ["a photo of dog"] and best["prior_prompts"]["images"] >= 2


@pytest.mark.parametrize("preset", options("model"))
def test_model_preset(preset, dog, checkpoint_files, tmp_path):
    """Built-in models as they are; sd15/sd2/sdxl from a checkpoint file of their family's tiny model."""
    family = model_family(preset)
    extra = [] if family is None else [f"model.path={checkpoint_files[family]}"]
    judge = [] if preset == "tiny_shapes" else [JUDGE]
    cfg, result, rows = _run(
        [f"model={preset}", *extra, *judge, f"data.dir={dog}", *small_run("lora")], tmp_path / "run"
    )
    assert result.steps == 2 and (tmp_path / "run" / "checkpoints" / "final" / "lora.safetensors").is_file()
    assert "eval/forgetting/clip_t_change" in _scored(rows, 2)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (
        saved["model"]["name"]
        == cfg.model.name
        == yaml.safe_load((CONF / "model" / f"{preset}.yaml").read_text())["name"]
    )


PRESETS = [(g, p) for g in ("train", "data") for p in options(g)]


@pytest.mark.parametrize(
    "group,preset",
    PRESETS,
    ids=[f"{g}-{p}" + ("-cpu-stand-in" if cpu_stand_ins(g, p) else "") for g, p in PRESETS],
)
def test_train_and_data_presets(group, preset, dog, tmp_path):
    """Each preset as shipped, except a value only CUDA runs (ids ending -cpu-stand-in): that one key
    takes its CPU stand-in (shipped.CPU_STAND_INS; e.g. adamw8bit -> adamw), as the test id says."""
    swaps = cpu_stand_ins(group, preset)
    cfg, result, _ = _run(
        [
            "model=tiny_shapes",
            f"{group}={preset}",
            "eval=none",
            f"data.dir={dog}",
            *small_run("lora"),
            *swaps,
        ],
        tmp_path / "run",
    )
    assert result.steps == 2
    shipped = _run_config_of(group, preset)
    for field in ("train", "data", "model"):  # everything but the swapped keys is the preset's
        ours, theirs = getattr(cfg, field), getattr(shipped, field)
        differs = {k for k in vars(theirs) if getattr(ours, k) != getattr(theirs, k)}
        allowed = {s.split("=")[0].split(".")[1] for s in swaps if s.startswith(f"{field}.")}
        allowed |= {"steps", "val_timesteps", "val_images", "dir"}  # small_run and the data folder
        assert differs <= allowed, (field, differs - allowed)


def _run_config_of(group: str, preset: str):
    """The preset composed as a user gets it (on the same model, data and logger as the run)."""
    from sdexp.entry import compose_run_config

    return compose_run_config(["model=tiny_shapes", f"{group}={preset}", "eval=none", "logger=none"])


def test_every_config_group_is_in_the_matrix():
    """A new group in conf/ must join this matrix (arch/ and budget/ are `sdexp pretrain`'s, run by
    tests/pretrain on the smoke budget; pretrain.yaml composes them)."""
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    assert groups == {"model", "method", "data", "train", "eval", "logger", "arch", "budget"}


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_preset(logger, dog, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    _run(
        ["model=tiny_shapes", f"logger={logger}", "eval=none", f"data.dir={dog}", *small_run("lora")[:-1]],
        tmp_path / "run",
    )
    runs = (
        list((tmp_path / "run" / "wandb").glob("offline-run-*"))
        if (tmp_path / "run" / "wandb").exists()
        else []
    )
    assert bool(runs) == (logger == "wandb")


@pytest.mark.parametrize("sweep", shipped_sweeps(), ids=lambda p: p.stem)
def test_shipped_sweep(sweep, dog, checkpoint_files, tmp_path):
    """Each sweep in sweeps/, shrunk, on the stand-in of the model it is written for, with its own
    precision, method and eval preset: every trial COMPLETE or PRUNED, none FAIL."""
    from sdexp.sweep.definition import load_yaml, parse_definition
    from sdexp.sweep.layout import load_study
    from sdexp.sweep.runner import SweepRunner

    raw = load_yaml(sweep.read_text())  # read as `sdexp sweep` reads it (YAML 1.2 numbers)
    small = shrink_sweep(raw)
    preset = sweep_model(raw)
    family = model_family(preset)
    extra = [f"data.dir={dog}", "logger=none", *SWEEP_EVAL, "train.val_timesteps=2", "data.val_images=1"]
    if family is not None:  # the user passes the model (and, for SD, a judge) as the README says
        chosen = [] if any(o.startswith("model=") for o in raw.get("overrides", [])) else [f"model={preset}"]
        extra += [*chosen, f"model.path={checkpoint_files[family]}", JUDGE]
    if any("method=dreambooth" in o for o in raw.get("overrides", [])):
        extra += METHOD_INPUTS["dreambooth"] + ["method.class_steps=1"]
    runner = SweepRunner(
        parse_definition(small, str(sweep)),
        tmp_path / sweep.stem,
        extra_overrides=extra,
        notify=lambda *_: None,
    )
    runner.prepare()
    outcome = runner.run()
    _, study = load_study(runner.sweep_dir)
    states = {t.number: (t.state.name, t.user_attrs.get("error")) for t in study.get_trials()}
    assert outcome.failed == 0 and all(s in ("COMPLETE", "PRUNED") for s, _ in states.values()), states
    assert outcome.completed + outcome.pruned == len(states) >= 2
    for number in states:  # the shipped precision really ran
        config = yaml.safe_load((runner.sweep_dir / "trials" / f"{number:04d}" / "config.yaml").read_text())
        wanted = next(
            (o.split("=", 1)[1] for o in raw["overrides"] if o.startswith("train.mixed_precision=")), "no"
        )
        assert config["train"]["mixed_precision"] == wanted
