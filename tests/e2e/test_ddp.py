"""One run on two processes (DDP over gloo on the CPU) with a real ``torchrun``: it trains what one
process with the doubled batch trains, writes one run folder and one W&B run, stops every process at
the same step, and a sweep can train each trial on two processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from killed_run_env import child_env
from safetensors.torch import load_file

from sdexp.tracking.run_folder import read_metrics

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
COMMON = [
    "model=tiny", "eval=none", "data.prompt=a photo of sks toy", "method.rank=2", "method.targets=all",
    "train.lr=1e-4", "train.seed=3", "train.noise_offset=0.1", "train.steps=5", "train.checkpoint_every=2",
    "data.val_images=3", "train.mixed_precision=no",
]  # fmt: skip


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(
        command,
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )


def val_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["val/loss"] for r in read_metrics(run_dir) if "val/loss" in r}


def test_two_processes_train_what_one_trains_with_twice_the_batch(compose, toy_images, tmp_path):
    from sdexp.run import train_run

    single = tmp_path / "single"
    train_run(compose(*COMMON, f"data.dir={toy_images}", "train.batch_size=4", "logger=none"), single)

    cwd = tmp_path / "cwd"  # where the processes start: nothing may appear here
    cwd.mkdir()
    runs = tmp_path / "runs"
    proc = torchrun(
        [
            str(REPO / "run.py"), *COMMON, f"data.dir={toy_images}", "train.batch_size=2",
            "logger=wandb", "logger.mode=offline",
            # a folder named by the clock to the microsecond: each process would compute its own
            f"hydra.run.dir={runs}/" + "${now:%H-%M-%S-%f}",
        ],
        cwd,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "process 0 of 2: steps 5" in proc.stdout and "process 1 of 2: steps 5" in proc.stdout
    assert list(cwd.iterdir()) == []
    (run_dir,) = list(runs.iterdir())  # one run folder
    run = json.loads((run_dir / "run.json").read_text())
    assert run["num_processes"] == 2 and run["effective_batch"] == 4 and run["status"] == "finished"
    assert json.loads((run_dir / "summary.json").read_text())["train/effective_batch"] == 4
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # one W&B run
    assert [p.relative_to(runs) for p in runs.rglob("best")] == [Path(run_dir.name, "best")]  # one best/
    assert (run_dir / "best" / "lora.safetensors").is_file()

    # The same validation losses and weights (to float32 rounding) as one process with batch 4. The
    # learning rate is small because Adam turns float32 rounding of near-zero gradients into
    # lr-sized steps (at lr 1e-3 the weights differ by up to 4e-5; at 1e-4 by 4e-7).
    ours, theirs = val_losses(run_dir), val_losses(single)
    assert sorted(ours) == sorted(theirs) == [0, 2, 4, 5]
    assert all(abs(ours[s] - theirs[s]) < 1e-5 for s in ours)
    assert ours[5] != ours[0]  # trained
    a = load_file(run_dir / "checkpoints" / "final" / "lora.safetensors")
    b = load_file(single / "checkpoints" / "final" / "lora.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-5
    trained = max(a[k].abs().max().item() for k in a if "lora_up" in k)
    assert trained > 1e-4  # LoRA up weights start at 0: these are trained weights being compared


def test_an_early_stop_stops_both_processes_at_the_same_step(toy_images, tmp_path):
    run_dir = tmp_path / "run"
    proc = torchrun(
        [
            str(REPO / "run.py"), *COMMON, f"data.dir={toy_images}", "train.batch_size=1", "logger=none",
            "train.steps=40", "train.val_every=2",
            # an improvement must beat the best by 10: none does, so validation 1 (step 2) stops the run
            "train.early_stopping.patience=1", "train.early_stopping.min_delta=10",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):  # each process's own word
        assert f"process {rank} of 2: steps 2 (early_stopping: val/loss did not improve" in proc.stdout
    run = json.loads((run_dir / "run.json").read_text())
    assert run["steps"] == 2 and run["stop_reason"].startswith("early_stopping")
    assert [c["step"] for c in run["checkpoints"] if c["name"] == "final"] == [2]
    assert max(r["step"] for r in read_metrics(run_dir)) == 2


def test_gpus_per_trial_trains_each_sweep_trial_on_two_processes(toy_images, tmp_path):
    from sdexp.sweep.layout import load_study

    definition = tmp_path / "d.yaml"
    definition.write_text(
        yaml.safe_dump(
            {
                "name": "ddp",
                "overrides": [o for o in COMMON if not o.startswith(("train.steps", "train.lr"))]
                + ["train.steps=2", "logger=none", "train.batch_size=1"],
                "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
                "sampler": {"name": "random", "seed": 0},
                "n_trials": 2,
            }
        )
    )
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "sdexp.cli", "sweep", str(definition), f"data.dir={toy_images}", "--out", str(out),
         "--no-report", "--gpus-per-trial", "2"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _, study = load_study(out)
    trials = study.get_trials()
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        run = json.loads((out / trial.user_attrs["run_dir"] / "run.json").read_text())
        assert run["num_processes"] == 2 and run["status"] == "finished"
        assert trial.intermediate_values == {2: trial.value}  # reported by the child's rank 0
