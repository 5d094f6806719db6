"""`sdexp sweep --launcher slurm|local`: the storage check, the sbatch script submitit writes, job
states, and worker jobs through submitit's local executor (the code path Slurm jobs take)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_sweep import tiny_sweep

from sdexp.errors import UserError
from sdexp.sweep.layout import load_study
from sdexp.sweep.slurm_launcher import check_job_launch, check_storage, job_state, make_executor
from sdexp.sweep.worker_status import read_statuses

REPO = Path(__file__).resolve().parents[2]


def _parse(*argv: str):
    from sdexp.cli import build_parser

    return build_parser().parse_args(["sweep", *argv])


def _fake_slurm(tmp_path: Path, monkeypatch) -> None:
    """sbatch and srun on PATH (submitit looks for srun before it writes a script); never run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "srun"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_the_default_folder_sqlite_is_refused_with_the_storage_to_pass():
    with pytest.raises(UserError, match="--storage postgresql://USER@HOST/DB"):
        check_storage(None, out_given=False, existing_storage=None)


def test_sqlite_in_an_explicit_folder_is_allowed_with_a_warning():
    said = []
    check_storage(None, out_given=True, existing_storage=None, notify=said.append)
    assert len(said) == 1 and "every node mounts" in said[0]
    said.clear()
    check_storage("postgresql://me@db/sweeps", out_given=False, existing_storage=None, notify=said.append)
    assert said == []
    check_storage(None, out_given=False, existing_storage="postgresql://me@db/sweeps", notify=said.append)
    assert said == []  # a resumed folder whose study already lives in PostgreSQL


def test_slurm_without_slurm_says_where_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="not a Slurm login node"):
        check_job_launch(_parse("s.yaml", "--launcher", "slurm", "--storage", "postgresql://me@db/x"))


def test_slurm_flags_reach_the_sbatch_script(tmp_path, monkeypatch):
    _fake_slurm(tmp_path, monkeypatch)
    args = _parse(
        "s.yaml",
        "--launcher",
        "slurm",
        "--workers",
        "4",
        "--slurm.partition",
        "gpu",
        "--slurm.gpus_per_task",
        "2",
        "--slurm.time",
        "90",
        "--slurm.cpus_per_task",
        "8",
        "--slurm.mem_gb",
        "64",
        "--slurm.account",
        "proj",
        "--storage",
        "postgresql://me@db/x",
    )
    check_job_launch(args)  # Slurm "is here" and the storage is shared: accepted
    from sdexp.sweep.slurm_launcher import slurm_option_values

    executor = make_executor("slurm", tmp_path / "jobs", slurm_option_values(args), "sdexp-s")
    script = executor._executor._make_submission_file_text("python -m worker", "uid")
    for line in (
        "--partition=gpu",
        "--gpus-per-task=2",
        "--time=90",
        "--cpus-per-task=8",
        "--mem=64GB",
        "--account=proj",
        "--job-name=sdexp-s",
    ):
        assert f"#SBATCH {line}\n" in script


def test_local_job_states_from_the_job_folder(tmp_path):
    import submitit
    from submitit.core.utils import JobPaths

    def result(job_id: str, outcome: str) -> None:
        path = JobPaths(tmp_path, job_id=job_id, task_id=0).result_pickle
        submitit.core.utils.cloudpickle_dump((outcome, 0), path)

    result("11", "success")
    result("12", "error")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert job_state("local", tmp_path, "11") == "FINISHED"
    assert job_state("local", tmp_path, "12") == "FAILED"
    assert job_state("local", tmp_path, str(os.getpid())) == "RUNNING"
    assert job_state("local", tmp_path, str(dead.pid)) == "LOST"


DEFINITION = tiny_sweep("jobs", n_trials=4)


def _sdexp(*argv: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdexp.cli", "sweep", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.slow
def test_two_local_worker_jobs_finish_the_study(tmp_path, toy_images):
    definition = tmp_path / "jobs.yaml"
    definition.write_text(yaml.safe_dump(DEFINITION))
    out = tmp_path / "sweep"
    done = _sdexp(
        str(definition),
        f"data.dir={toy_images}",
        "--out",
        str(out),
        "--no-report",
        "--launcher",
        "local",
        "--workers",
        "2",
        "--wait",
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted 2 local worker jobs" in done.stdout and "trials: 4 complete" in done.stdout
    _, study = load_study(out)
    finished = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(finished) == 4 and len(study.get_trials()) == 4
    assert {s["worker"] for s in read_statuses(out)} == {"local-0", "local-1"}
    assert all(s["state"] == "done" and s["exit_code"] == 0 for s in read_statuses(out))

    status = _sdexp("--status", str(out), timeout=120)
    assert status.returncode == 0, status.stderr
    jobs = [line for line in status.stdout.splitlines() if "local-" in line and "FINISHED" in line]
    assert len(jobs) == 2, status.stdout
    assert "4/4 done" in status.stdout
