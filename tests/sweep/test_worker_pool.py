"""`sdexp sweep --workers N` / `--gpus`: the slots, the flags, the status view, and a real pool of
worker processes on one study, interrupted with Ctrl-C and resumed."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_sweep import tiny_sweep

from sdexp.errors import UserError
from sdexp.sweep.layout import SweepInfo, default_storage, load_study, write_sweep_info
from sdexp.sweep.status_view import render_plain, sweep_status
from sdexp.sweep.worker_pool import Slot, child_argv, gpu_slots, launch_plan, worker_slots
from sdexp.sweep.worker_status import mark_done, read_statuses, write_status

REPO = Path(__file__).resolve().parents[2]


def _parse(*argv: str):
    from sdexp.cli import build_parser

    return build_parser().parse_args(["sweep", *argv])


# ----- GPU slots -----------------------------------------------------------------------------


def test_all_gpus_one_worker_each():
    assert gpu_slots("all", 3) == [("0",), ("1",), ("2",)]


def test_explicit_gpus_and_several_workers_per_gpu():
    assert gpu_slots("0,3", 4, trials_per_gpu=2) == [("0",), ("0",), ("3",), ("3",)]


def test_gpus_grouped_for_multi_gpu_trials():
    assert gpu_slots("all", 4, gpus_per_trial=2) == [("0", "1"), ("2", "3")]
    assert gpu_slots("1,2,3,0", 4, trials_per_gpu=2, gpus_per_trial=2) == [
        ("1", "2"),
        ("1", "2"),
        ("3", "0"),
        ("3", "0"),
    ]


def test_indices_are_those_this_process_sees():
    # the parent runs with CUDA_VISIBLE_DEVICES=4,6: its GPU 1 is the machine's GPU 6
    assert gpu_slots("1", 2, visible=["4", "6"]) == [("6",)]


@pytest.mark.parametrize(
    "spec,count,per_trial,message",
    [
        ("0,2", 2, 1, "GPU 2 does not exist"),
        ("all", 0, 1, "--workers N"),
        ("all", 3, 2, "groups of 2"),
        ("0,0", 2, 1, "twice"),
        ("first", 2, 1, "not 'all'"),
    ],
)
def test_bad_gpu_requests_say_what_to_do(spec, count, per_trial, message):
    with pytest.raises(UserError, match=message):
        gpu_slots(spec, count, gpus_per_trial=per_trial)


def test_gpus_on_a_machine_without_cuda_point_to_workers(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--workers N"):
        worker_slots(_parse("s.yaml", "--gpus", "all"))


def test_gpu_slots_use_the_device_count(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = _parse("s.yaml", "--gpus", "all", "--trials-per-gpu", "2")
    assert launch_plan(args) == [
        Slot("w0", ("0",)),
        Slot("w1", ("0",)),
        Slot("w2", ("1",)),
        Slot("w3", ("1",)),
    ]


def test_multi_gpu_trials_get_one_worker_per_group_and_the_flag(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = _parse("s.yaml", "--gpus", "all", "--gpus-per-trial", "2")
    assert launch_plan(args) == [Slot("w0", ("0", "1")), Slot("w1", ("2", "3"))]
    argv = child_argv(args, tmp_path)
    assert argv[argv.index("--gpus-per-trial") + 1] == "2" and "--gpus" not in argv


# ----- flags -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--workers", "0"], "--workers: must be >= 1"),
        (["--trials-per-gpu", "2"], "only with --gpus"),
        (["--gpus", "all", "--workers", "2"], "drop --workers"),
        (["--gpus", "0", "--launcher", "slurm"], "--slurm.gpus_per_task"),
        (["--slurm.partition", "gpu"], "only with --launcher"),
        (["--wait"], "only with --launcher"),
    ],
)
def test_flags_that_cannot_work_together_fail_at_the_door(argv, message):
    with pytest.raises(UserError, match=message):
        launch_plan(_parse("s.yaml", *argv))


def test_a_plain_sweep_launches_nothing():
    assert launch_plan(_parse("s.yaml", "data.dir=x")) is None
    assert launch_plan(_parse("s.yaml", "--workers", "3")) == [Slot("w0"), Slot("w1"), Slot("w2")]


def test_children_get_the_parents_arguments_without_the_launch_flags(tmp_path):
    args = _parse(
        "s.yaml", "data.dir=x", "train.lr=1e-3", "--n-trials", "6", "--workers", "2", "--resume-trials"
    )
    argv = child_argv(args, tmp_path)
    assert argv[:3] == ["s.yaml", "data.dir=x", "train.lr=1e-3"]
    assert argv[argv.index("--n-trials") + 1] == "6" and "--resume-trials" in argv
    assert "--workers" not in argv and argv[-3:] == ["--out", str(tmp_path), "--no-report"]
    assert _parse(*argv).out == tmp_path  # what the child parses back


# ----- the status view ---------------------------------------------------------------------


def _small_study(sweep_dir: Path):
    """A 6-trial study: two finished (10 s and 20 s), one failed, one running, one waiting."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    info = SweepInfo("s", "s", default_storage(sweep_dir), ["score"], ["maximize"], 6)
    sweep_dir.mkdir()
    write_sweep_info(sweep_dir, info)
    study = optuna.create_study(study_name="s", storage=info.storage, direction="maximize")
    lr = {"lr": FloatDistribution(1e-4, 1e-2)}
    start = datetime.datetime(2026, 1, 1, 12)
    for value, seconds in ((0.5, 10), (0.8, 20)):
        trial = create_trial(state=TrialState.COMPLETE, values=[value], params={"lr": 1e-3}, distributions=lr)
        trial.datetime_start, trial.datetime_complete = start, start + datetime.timedelta(seconds=seconds)
        study.add_trial(trial)
    study.add_trial(create_trial(state=TrialState.FAIL, params={"lr": 2e-3}, distributions=lr))
    running = study.ask()
    study.enqueue_trial({"lr": 5e-3})
    return study, running.number


def test_sweep_status_counts_best_workers_and_eta(tmp_path):
    sweep_dir = tmp_path / "s"
    _, running = _small_study(sweep_dir)
    write_status(sweep_dir, "w0", state="running", trial=running, step=6, max_steps=12)
    write_status(sweep_dir, "w1", state="running", trial=1, step=12, max_steps=12)  # trial 1 has finished
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_status(sweep_dir, "w2", pid=dead.pid, state="idle")  # its process is gone
    status = sweep_status(sweep_dir)
    assert status["finished"] == 2 and status["n_trials"] == 6
    c = status["counts"]
    assert (c["complete"], c["fail"], c["running"], c["waiting"]) == (2, 1, 1, 1)
    assert status["best"] == {"trial": 1, "objective": "score", "value": 0.8, "pareto_size": None}
    workers = {w["worker"]: w for w in status["workers"]}
    assert workers["w0"]["state"] == "running" and workers["w0"]["step"] == 6
    assert workers["w1"]["state"] == "idle"  # between trials
    assert workers["w2"]["state"] == "lost"
    # mean 15 s a trial x 4 still to finish / 2 active workers
    assert status["mean_trial_seconds"] == pytest.approx(15)
    assert status["eta_seconds"] == pytest.approx(30)
    line = render_plain(status)
    assert line.startswith("s: 2/6 done · 1 running · 1 failed · 0 pruned")
    assert f"best score 0.8 (trial 1) · w0 trial {running} step 6/12 · w1 idle · w2 lost · eta 30s" in line


def test_a_finished_worker_keeps_its_last_trial_and_exit_code(tmp_path):
    write_status(tmp_path, "w0", state="running", trial=3, step=5, max_steps=9)
    mark_done(tmp_path, "w0", 130)
    mark_done(tmp_path, "w0", None)  # the worker's own exit hook, which cannot know its exit code
    (record,) = read_statuses(tmp_path)
    assert (record["state"], record["trial"], record["exit_code"]) == ("done", 3, 130)


# ----- a real pool ---------------------------------------------------------------------------

# Like test_sweep_workers.py: the tiny model, no scoring, heartbeats every second.
DEFINITION = tiny_sweep("pool", n_trials=4)


def _start_pool(definition: Path, images: Path, out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sdexp.cli", "sweep", str(definition), f"data.dir={images}"]
        + ["--out", str(out), "--no-report", "--workers", "2"],
        cwd=REPO,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as test_sweep_workers.py
    )


def _both_workers_running(out: Path) -> list[int] | None:
    """The two trials the workers are training, once both are (per their status files and the study)."""
    statuses = [s for s in read_statuses(out) if s["state"] == "running"]
    if len(statuses) < 2 or not (out / "study.db").exists():
        return None
    _, study = load_study(out)
    running = {t.number for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"}
    trials = sorted(s["trial"] for s in statuses)
    return trials if len(running) == 2 and set(trials) == running else None


def _overlap(a, b) -> bool:
    return a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete


@pytest.mark.slow
def test_two_workers_run_at_once_stop_on_ctrl_c_and_resume(tmp_path, toy_images):
    definition = tmp_path / "pool.yaml"
    definition.write_text(yaml.safe_dump(DEFINITION))
    out = tmp_path / "sweep"
    parent = _start_pool(definition, toy_images, out, tmp_path / "first.log")
    deadline = time.monotonic() + 240
    while (interrupted := _both_workers_running(out)) is None:
        assert parent.poll() is None, (tmp_path / "first.log").read_text()
        assert time.monotonic() < deadline, "the two workers never ran trials at the same time"
        time.sleep(0.1)
    parent.send_signal(signal.SIGINT)  # Ctrl-C reaches the parent only (the workers have their sessions)
    assert parent.wait(timeout=180) == 130
    first = (tmp_path / "first.log").read_text()
    _, study = load_study(out)
    trials = {t.number: t for t in study.get_trials()}
    for number in interrupted:  # both running trials failed, their parameters queued again
        assert trials[number].state.name == "FAIL"
        assert trials[number].user_attrs["error"].startswith("KeyboardInterrupt")
    a, b = (trials[n] for n in interrupted)
    assert _overlap(a, b)  # the two workers ran their trials at the same time
    waiting = [t for t in trials.values() if t.state.name == "WAITING"]
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == interrupted
    assert "re-queued: trial" in first
    assert {s["state"] for s in read_statuses(out)} == {"done"}

    parent = _start_pool(definition, toy_images, out, tmp_path / "second.log")
    assert parent.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()
    second = (tmp_path / "second.log").read_text()
    _, study = load_study(out)
    done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(done) == 4  # exactly n_trials, the interrupted parameters among them
    assert all(any(t.params == trials[n].params for t in done) for n in interrupted)
    assert any(_overlap(a, b) for a in done for b in done if a.number < b.number)
    statuses = [line for line in second.splitlines() if line.startswith("pool: ")]
    assert any(" w0 " in line and " w1 " in line for line in statuses)  # one line shows both workers
    assert statuses[-1].startswith("pool: 4/4 done")
    assert "trials: 4 complete" in second
    workers = {s["worker"]: s for s in read_statuses(out)}
    assert workers.keys() == {"w0", "w1"} and all(s["exit_code"] == 0 for s in workers.values())
    assert json.loads((out / "sweep.json").read_text())["n_trials"] == 4
