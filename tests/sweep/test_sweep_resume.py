"""`sdexp sweep --resume-trials`: a trial whose worker was killed mid-way is retried from its last
checkpoint (not from step 0), carrying its earlier pruner reports; the study still ends with
exactly n_trials finished. Real `sdexp sweep` processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from killed_run_env import child_env

from sdexp.sweep.layout import load_study
from sdexp.tracking.run_folder import read_metrics

REPO = Path(__file__).resolve().parents[2]
KILLED_RUN = REPO / "tests" / "methods" / "killed_run.py"
DEFINITION = {
    "name": "r",
    "overrides": ["model=tiny", "eval=none", "data.prompt=a photo of sks toy", "logger=none",
                  "method.targets=all", "train.steps=6", "train.checkpoint_every=2", "data.val_images=1"],
    "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    "sampler": {"name": "random", "seed": 0},
    "n_trials": 2,
    "heartbeat_seconds": 1,  # the killed worker's trial is failed as stale ~5 s after its death
}  # fmt: skip


def _sweep(tmp_path, images, out, *, kill_at: int | None = None) -> subprocess.CompletedProcess:
    definition = tmp_path / "r.yaml"
    definition.write_text(yaml.safe_dump(DEFINITION))
    args = [
        "sweep",
        str(definition),
        f"data.dir={images}",
        "--out",
        str(out),
        "--no-report",
        "--resume-trials",
    ]
    command = [str(KILLED_RUN), str(kill_at), "sdexp"] if kill_at else ["-m", "sdexp.cli"]
    return subprocess.run(
        [sys.executable, *command, *args],
        cwd=REPO, env=child_env(), capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_a_killed_trial_resumes_from_its_checkpoint_with_its_reports(tmp_path, toy_images):
    out = tmp_path / "sweep"
    killed = _sweep(tmp_path, toy_images, out, kill_at=5)  # trial 0 dies after checkpoint 4
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert (out / "trials/0000/checkpoints/step-000004/state/callbacks.pt").is_file()

    resumed = _sweep(tmp_path, toy_images, out)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    _, study = load_study(out)
    by_number = {t.number: t for t in study.get_trials()}
    states = sorted(t.state.name for t in by_number.values())
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]  # n_trials finished; the killed attempt failed stale
    dead = by_number[0]
    retry = next(t for t in by_number.values() if t.user_attrs.get("resumed_from"))
    assert retry.params == dead.params and retry.number > 0
    assert retry.user_attrs["resumed_from"] == {"trial": 0, "checkpoint": "step-000004", "step": 4}
    # The pruner sees the whole history: the dead attempt's reports, then the retry's own.
    assert sorted(retry.intermediate_values) == [2, 4, 6]
    assert {s: retry.intermediate_values[s] for s in (2, 4)} == dead.intermediate_values
    # It started at step 4, not 0: every step trained once, the first four by the dead attempt
    # (those rows are its rows, wall-clock times and all), the killed step 5 trained again.
    run_dir = out / retry.user_attrs["run_dir"]
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    dead_rows = read_metrics(out / "trials/0000")
    assert [r for r in rows if r["step"] <= 4] == [r for r in dead_rows if r["step"] <= 4]
    assert "resuming trial 0 from step-000004" in resumed.stdout
    run = yaml.safe_load((run_dir / "run.json").read_text())
    assert run["status"] == "finished" and [r["from"] for r in run["resumes"]] == ["step-000004"]
