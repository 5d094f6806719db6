"""A sweep survives its worker being killed or interrupted, and several workers share one study:
no trial lost, none run twice, exactly n_trials finished. Real `sdexp sweep` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_sweep import tiny_sweep

from sdexp.sweep.layout import load_study

REPO = Path(__file__).resolve().parents[2]
# tiny_sweep: ~1 s a trial, heartbeats every second (a dead worker's trial is noticed in ~5 s).
DEFINITION = tiny_sweep("w", n_trials=4)


def _start(tmp_path, images, out) -> subprocess.Popen:
    definition = tmp_path / "w.yaml"
    definition.write_text(yaml.safe_dump(DEFINITION))
    log = open(out.parent / f"{out.name}-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sdexp.cli",
            "sweep",
            str(definition),
            f"data.dir={images}",
            "--out",
            str(out),
            "--no-report",
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        # A shell's background jobs (CI runs us as one) inherit SIGINT ignored, and Python keeps an
        # ignored SIGINT ignored; restore the default so the worker hears Ctrl-C as a terminal user's would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "the sweep ended before it got there"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def _finished(out: Path):
    _, study = load_study(out)
    trials = study.get_trials()
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    return trials, done


def _assert_exact(out: Path, n: int = 4):
    trials, done = _finished(out)
    assert len(done) == n, [(t.number, t.state.name) for t in trials]
    assert len({t.number for t in done}) == n
    assert len({tuple(sorted(t.params.items())) for t in done}) == n  # no trial run twice
    for t in done:  # each finished trial has its own finished run folder
        assert (out / t.user_attrs["run_dir"] / "run.json").is_file()
    return trials, done


@pytest.mark.slow
def test_a_killed_worker_is_resumed_without_losing_or_repeating_trials(tmp_path, toy_images):
    out = tmp_path / "sweep"
    proc = _start(tmp_path, toy_images, out)
    _wait_for(out / "trials" / "0001" / "config.yaml", proc)  # trial 1 is running
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, study = load_study(out)
    killed = study.trials[1]
    assert killed.state.name == "RUNNING"  # left behind by the dead worker
    resumed = _start(tmp_path, toy_images, out)
    assert resumed.wait(timeout=600) == 0
    trials, done = _assert_exact(out)
    stale = next(t for t in trials if t.number == 1)
    assert stale.state.name == "FAIL"  # noticed by its missing heartbeats ...
    retry = [t for t in done if t.params == killed.params]
    assert len(retry) == 1 and retry[0].number > 1  # ... and rerun once with the same parameters


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_next_invocation_reruns_the_trial(tmp_path, toy_images):
    out = tmp_path / "sweep"
    proc = _start(tmp_path, toy_images, out)
    _wait_for(out / "trials" / "0001" / "config.yaml", proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    _, study = load_study(out)
    interrupted = study.trials[1]
    assert interrupted.state.name == "FAIL" and interrupted.user_attrs["error"].startswith(
        "KeyboardInterrupt"
    )
    assert [t.state.name for t in study.trials[2:]] == ["WAITING"]  # its parameters, queued again
    assert _start(tmp_path, toy_images, out).wait(timeout=600) == 0
    _, done = _assert_exact(out)
    assert sum(t.params == interrupted.params for t in done) == 1


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path, toy_images):
    out = tmp_path / "sweep"
    out.mkdir()
    first = _start(tmp_path, toy_images, out)
    _wait_for(out / "sweep.json", first)
    second = _start(tmp_path, toy_images, out)
    assert first.wait(timeout=600) == 0 and second.wait(timeout=600) == 0
    trials, done = _assert_exact(out)
    assert len(trials) == 4  # nothing failed, nothing extra
    _, study = load_study(out)
    assert study.user_attrs["workers"] == 2
