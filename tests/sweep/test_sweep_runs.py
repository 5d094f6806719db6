"""Whole sweeps on the built-in tiny model (seconds a trial): grid, seeded random, TPE, pruning,
failures, W&B grouping, `sdexp best`, the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from sdexp.sweep.definition import parse_definition
from sdexp.sweep.layout import load_study
from sdexp.sweep.runner import SweepRunner

# val/loss is the objective: the tiny model has no CLIP; 4 steps, scored at 2 and 4.
BASE = ["model=tiny", "eval=none", "data.prompt=a photo of sks toy", "method.targets=all", "logger=none",
        "train.steps=4", "train.checkpoint_every=2", "data.val_images=2"]  # fmt: skip


def _run(tmp_path, name, raw, images, extra=()):
    definition = parse_definition({"name": name, "overrides": BASE, **raw})
    runner = SweepRunner(
        definition, tmp_path / name, extra_overrides=[f"data.dir={images}", *extra], notify=lambda *_: None
    )
    runner.prepare()
    outcome = runner.run()
    return runner, outcome


def _params(runner):
    _, study = load_study(runner.sweep_dir)
    return [(t.number, t.state.name, t.params) for t in study.get_trials()]


def test_a_grid_runs_exactly_the_grid_and_sdexp_best_names_the_winner(tmp_path, toy_images, cli):
    runner, outcome = _run(
        tmp_path,
        "grid",
        {"space": {"train.lr": [1e-2, 1e-3], "method.rank": [2, 4]}, "sampler": "grid"},
        toy_images,
    )
    trials = _params(runner)
    assert outcome.completed == 4 and len(trials) == 4
    assert sorted((p["train.lr"], p["method.rank"]) for _, _, p in trials) == [
        (1e-3, 2),
        (1e-3, 4),
        (1e-2, 2),
        (1e-2, 4),
    ]
    for number, state, _ in trials:
        run = json.loads((runner.sweep_dir / "trials" / f"{number:04d}" / "run.json").read_text())
        assert (
            state == "COMPLETE"
            and run["status"] == "finished"
            and {"setup", "loop", "teardown"} <= set(run["timings"])
        )
    _, study = load_study(runner.sweep_dir)
    winner = min(study.get_trials(), key=lambda t: t.value)
    proc = cli(["-m", "sdexp.cli", "best", str(runner.sweep_dir), "--json"])
    assert proc.returncode == 0, proc.stderr
    best = json.loads(proc.stdout)
    assert best[0]["trial"] == winner.number and best[0]["objectives"]["val_loss"] == pytest.approx(
        winner.value
    )
    out = tmp_path / "exported"
    proc = cli(["-m", "sdexp.cli", "best", str(runner.sweep_dir), "--export", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert (out / "lora.safetensors").read_bytes() == (
        runner.sweep_dir / "trials" / f"{winner.number:04d}" / "best" / "lora.safetensors"
    ).read_bytes()
    assert (
        json.loads((out / "trial.json").read_text())["trial"] == winner.number
        and (out / "config.yaml").is_file()
    )
    again = cli(["-m", "sdexp.cli", "best", str(runner.sweep_dir), "--export", str(out)])
    assert again.returncode == 2 and "not empty" in again.stderr
    # A second invocation of a finished sweep runs nothing more.
    _, outcome = _run(
        tmp_path,
        "grid",
        {"space": {"train.lr": [1e-2, 1e-3], "method.rank": [2, 4]}, "sampler": "grid"},
        toy_images,
    )
    assert len(_params(runner)) == 4


def test_a_finished_study_grows_when_n_trials_is_raised(tmp_path, toy_images):
    raw = {
        "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "sampler": {"name": "random", "seed": 0},
    }
    runner, _ = _run(tmp_path, "grow", {**raw, "n_trials": 2}, toy_images)
    assert len(_params(runner)) == 2
    runner, outcome = _run(tmp_path, "grow", {**raw, "n_trials": 3}, toy_images)
    assert outcome.completed == 3 and len(_params(runner)) == 3


def test_a_seeded_random_sweep_is_reproducible_and_tpe_runs(tmp_path, toy_images):
    space = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}, "method.rank": [2, 4, 8]}
    first, _ = _run(
        tmp_path, "r1", {"space": space, "sampler": {"name": "random", "seed": 3}, "n_trials": 3}, toy_images
    )
    second, _ = _run(
        tmp_path, "r2", {"space": space, "sampler": {"name": "random", "seed": 3}, "n_trials": 3}, toy_images
    )
    assert [p for *_, p in _params(first)] == [p for *_, p in _params(second)]
    tpe, outcome = _run(
        tmp_path,
        "tpe",
        {"space": space, "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2}, "n_trials": 3},
        toy_images,
    )
    assert outcome.completed == 3 and len({p["train.lr"] for *_, p in _params(tpe)}) == 3


def test_pruning_stops_a_hopeless_trial_and_records_the_step(tmp_path, toy_images):
    raw = {
        "space": {"train.lr": [1e-2, 1e-12]},
        "sampler": "grid",
        "pruner": {"name": "median", "n_startup_trials": 1},
    }
    runner, outcome = _run(tmp_path, "prune", raw, toy_images)
    _, study = load_study(runner.sweep_dir)
    good, hopeless = study.get_trials()
    assert good.state.name == "COMPLETE" and good.params["train.lr"] == 1e-2
    assert hopeless.state.name == "PRUNED" and hopeless.user_attrs["pruned_step"] == 2
    run = json.loads((runner.sweep_dir / "trials" / "0001" / "run.json").read_text())
    assert run["steps"] == 2 and run["stop_reason"].startswith("pruned at step 2")


def test_failed_trials_are_recorded_with_their_reason_and_the_sweep_goes_on(tmp_path, toy_images):
    """One trial diverges to NaN, one names a data folder that does not exist; the third completes."""
    raw = {
        "space": {"train.lr": [1e-3, 1e30], "data.dir": [str(toy_images), str(tmp_path / "gone")]},
        "sampler": "grid",
    }
    definition = parse_definition({"name": "fail", "overrides": BASE, **raw})
    runner = SweepRunner(definition, tmp_path / "fail", notify=lambda *_: None)
    runner.prepare()
    outcome = runner.run()
    _, study = load_study(runner.sweep_dir)
    states = {(t.params["train.lr"], t.params["data.dir"]): t for t in study.get_trials()}
    assert outcome.completed == 1 and outcome.failed == 3
    assert states[(1e-3, str(toy_images))].state.name == "COMPLETE"
    nan = states[(1e30, str(toy_images))]
    assert nan.state.name == "FAIL" and nan.user_attrs["error"].startswith("FloatingPointError: loss is nan")
    missing = states[(1e-3, str(tmp_path / "gone"))]
    assert missing.state.name == "FAIL" and "does not exist" in missing.user_attrs["error"]
    run = json.loads((runner.sweep_dir / "trials" / f"{nan.number:04d}" / "run.json").read_text())
    assert run["status"] == "failed" and "nan" in run["error"]  # the trial's logs are kept
    for trial in (nan, missing):  # each run.log ends with the traceback of the trial's error
        log = (runner.sweep_dir / "trials" / f"{trial.number:04d}" / "run.log").read_text()
        assert "Traceback (most recent call last)" in log
        assert log.rstrip().splitlines()[-1].endswith(trial.user_attrs["error"].split(": ", 1)[1])
    assert not outcome.failed_out and outcome.stopped == "every grid point has run"  # one trial completed


def test_trials_that_all_fail_alike_stop_the_sweep_in_one_line_and_leave_their_logs(
    tmp_path, toy_images, cli, capsys
):
    """The images are moved away after the sweep started: every trial would fail the same way."""
    import shutil

    from analysis.report import write_report

    raw = {"space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
           "sampler": {"name": "random", "seed": 0}, "n_trials": 8}  # fmt: skip
    definition = parse_definition({"name": "gone", "overrides": BASE, **raw})
    runner = SweepRunner(
        definition, tmp_path / "gone", extra_overrides=[f"data.dir={toy_images}"], notify=print
    )
    runner.prepare()
    shutil.rmtree(toy_images)
    outcome = runner.run()
    sweep, error = (
        runner.sweep_dir,
        f"UserError: image folder {toy_images} does not exist; set data.dir to a folder of images",
    )
    assert (outcome.completed, outcome.failed, outcome.failed_out) == (0, 3, True)
    assert outcome.stopped == (
        f"sweep gone: all 3 trials failed with the same error: {error} — see {sweep}/trials/0000/run.log"
    )
    assert "sweep gone:" not in capsys.readouterr().out  # the caller says it, once
    logs = [sweep / "trials" / f"{n:04d}" / "run.log" for n in range(3)]
    for n, log in enumerate(logs):
        text = log.read_text()
        assert text.startswith(f"trial {n}: train.lr=") and "Traceback (most recent call last)" in text
        assert text.rstrip().splitlines()[-1] == f"sdexp.errors.{error}"

    proc = cli(["-m", "sdexp.cli", "best", str(sweep)])
    assert proc.returncode == 0, proc.stderr
    assert "no trial has completed yet" in proc.stdout and "failed trials (3):" in proc.stdout
    for n, log in enumerate(logs):
        assert f"  trial {n}: {error}\n    log: {log}\n" in proc.stdout

    html = write_report(sweep).read_text()
    failed = html.split("<h2>Failed trials (3)</h2>")[1].split("</table>")[0]
    assert failed.count("does not exist; set data.dir") == 3
    assert all(f'<a href="../trials/{n:04d}/run.log">trials/{n:04d}/run.log</a>' in failed for n in range(3))


@pytest.mark.slow
def test_the_sweep_command_exits_2_when_every_trial_fails_alike(tmp_path, toy_images, cli):
    """A learning rate no run survives, written as people write it (1e29, which PyYAML alone reads as
    a string): three trials diverge, the sweep stops with their error and a run.log to read."""
    sweep = tmp_path / "diverge.yaml"
    sweep.write_text(
        f"name: diverge\noverrides: [{', '.join(BASE)}]\n"
        "space:\n  train.lr: {type: float, low: 1e29, high: 1e30, log: true}\n"
        "sampler: {name: random, seed: 0}\nn_trials: 6\n"
    )
    out = tmp_path / "out"
    proc = cli(["-m", "sdexp.cli", "sweep", str(sweep), f"data.dir={toy_images}", "--out", str(out)])
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"sdexp sweep: error: sweep diverge: all 3 trials failed with the same error: "
        rf"FloatingPointError: loss is nan at step \d+ — see {re.escape(str(out))}/trials/0000/run.log",
        last,
    ), last
    assert "Traceback" not in proc.stderr and "trials: 0 complete, 0 pruned, 3 failed" in proc.stdout
    assert (out / "report" / "index.html").is_file() and not (out / "trials" / "0003").exists()
    log = (out / "trials" / "0000" / "run.log").read_text()
    assert log.startswith("trial 0: train.lr=") and "Traceback (most recent call last)" in log
    assert re.search(r"FloatingPointError: loss is nan at step \d+\n$", log)


def test_trials_log_to_wandb_grouped_by_study(tmp_path, toy_images):
    from sdexp.tracking.wandb_offline import read_offline_run

    raw = {"space": {"train.lr": [1e-3, 1e-2]}, "sampler": "grid"}
    definition = parse_definition({"name": "wb", "overrides": [*BASE, "logger=wandb"], **raw})
    runner = SweepRunner(
        definition, tmp_path / "wb", extra_overrides=[f"data.dir={toy_images}"], notify=lambda *_: None
    )
    runner.prepare()
    runner.run()
    for number in (0, 1):
        got = read_offline_run(runner.sweep_dir / "trials" / f"{number:04d}")
        assert got["run"]["group"] == "wb" and got["run"]["name"] == f"wb-{number:04d}"
        assert "val/loss" in got["summary"] and got["config"]["train"]["lr"] in (1e-3, 1e-2)
    from sdexp.sweep.summary import log_sweep_summary

    log_sweep_summary(runner)
    summary = read_offline_run(runner.sweep_dir / "summary")
    assert summary["run"]["group"] == "wb" and summary["summary"]["trials/complete"] == 2
    assert summary["summary"]["best/trial"] in (0, 1)


def test_a_resumed_sweep_must_be_the_same_sweep(tmp_path, toy_images):
    from sdexp.errors import UserError

    _run(tmp_path, "same", {"space": {"train.lr": [1e-3]}, "sampler": "grid"}, toy_images)
    definition = parse_definition(
        {"name": "same", "overrides": BASE, "space": {"train.lr": [1e-2]}, "sampler": "grid"}
    )
    with pytest.raises(UserError, match="different sweep definition"):
        SweepRunner(definition, tmp_path / "same", extra_overrides=[f"data.dir={toy_images}"]).prepare()


def test_the_report_renders_with_every_image_present(tmp_path, toy_images):
    import re

    from analysis.report import write_report

    runner, _ = _run(tmp_path, "rep", {"space": {"train.lr": [1e-3, 1e-2]}, "sampler": "grid"}, toy_images)
    index = write_report(runner.sweep_dir)
    html = index.read_text()
    assert "optuna-dashboard" in html and "train.lr" in html
    for src in re.findall(r'<img[^>]+src="([^"]+)"', html):
        assert (index.parent / src).is_file(), src


def test_the_sweep_command_reports_bad_input_in_one_line(tmp_path, toy_images, cli):
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(
        yaml.safe_dump({"name": "bad", "overrides": BASE, "space": {"train.lr": {"type": "float", "low": 1}}})
    )
    proc = cli(
        ["-m", "sdexp.cli", "sweep", str(sweep), f"data.dir={toy_images}", "--out", str(tmp_path / "o")]
    )
    assert proc.returncode == 2 and "space.train.lr" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli(
        [
            "-m",
            "sdexp.cli",
            "sweep",
            str(Path("sweeps/demo.yaml")),
            "data.dir=/nonexistent",
            "--out",
            str(tmp_path / "o2"),
        ]
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr
