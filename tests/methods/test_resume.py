"""Resume (train.save_state + run.py --resume): a run killed by SIGKILL right after checkpoint k and
resumed ends byte-identical to an uninterrupted run of the same seed: weights, metrics.jsonl and
best/. Random crops and flips, a mid-epoch checkpoint and (full fine-tune) EMA are in play."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from killed_run_env import child_env

from sdexp.errors import UserError
from sdexp.resume import main as resume_main
from sdexp.resume import resume_run
from sdexp.run import save_config, train_run
from sdexp.tracking.run_folder import read_metrics

REPO = Path(__file__).resolve().parents[2]
KILLED_RUN = Path(__file__).with_name("killed_run.py")
# 6 images at batch 2: 3 batches an epoch, so step 4 is a checkpoint in the middle of epoch 1.
COMMON = ["model=tiny", "eval=none", "data.prompt=a photo of sks toy", "data.val_images=1",
          "data.crop=random", "data.flip=true", "train.steps=6", "train.batch_size=2",
          "train.checkpoint_every=2", "train.save_state=true"]  # fmt: skip
LORA = [*COMMON, "method.targets=all", "train.lr=1e-3"]
FINETUNE = [*COMMON, "method=finetune", "method.ema_decay=0.9", "train.lr=1e-3"]
KILL_AT = 5  # the end of step 5: after checkpoint 4, with step 5's rows already in metrics.jsonl

# The in-process reference and the killed/resumed children must compute with the same thread count
# (one) for their weights to agree to the byte.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _fixed_date(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")  # the kohya metadata's date, whatever the clock says


def _killed_run(overrides: list[str], run_dir: Path) -> subprocess.CompletedProcess:
    """run.py in a subprocess that SIGKILLs itself at the end of step KILL_AT."""
    proc = subprocess.run(
        [sys.executable, str(KILLED_RUN), str(KILL_AT), "run.py", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert max(r["step"] for r in read_metrics(run_dir)) == KILL_AT  # it wrote rows past the checkpoint
    return proc


def _rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without wall-clock values (time, throughput)."""
    return [
        {k: v for k, v in row.items() if k != "time" and not k.startswith("perf/")}
        for row in read_metrics(run_dir)
    ]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_same_run(resumed: Path, reference: Path, weights: list[str]) -> None:
    for name in weights:
        assert (resumed / "checkpoints/final" / name).read_bytes() == (
            reference / "checkpoints/final" / name
        ).read_bytes(), name
    assert _files(resumed / "best") == _files(reference / "best") and _files(reference / "best")
    assert _rows(resumed) == _rows(reference)
    best, ref_best = (json.loads((d / "best.json").read_text()) for d in (resumed, reference))
    assert best["history"] == ref_best["history"] and best["step"] == ref_best["step"]
    run = json.loads((resumed / "run.json").read_text())
    assert run["status"] == "finished" and run["steps"] == 6
    assert [r["from"] for r in run["resumes"]] == ["step-000004"]
    # the killed run's later checkpoints went; one resumable state is kept: the newest
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == [
        "final",
        "step-000002",
        "step-000004",
    ]
    assert [p.parent.name for p in (resumed / "checkpoints").glob("*/state")] == ["final"]


@pytest.mark.slow
def test_a_killed_lora_run_resumed_with_run_py_matches_an_uninterrupted_one(tmp_path, toy_images, compose):
    overrides = [*LORA, f"data.dir={toy_images}"]
    reference = train_run(compose(*overrides, "logger=none"), tmp_path / "reference").run_dir

    killed = tmp_path / "killed"
    _killed_run([*overrides, "logger=wandb", "logger.mode=offline"], killed)
    assert (killed / "checkpoints/step-000004/state/callbacks.pt").is_file()
    first_id = json.loads((killed / "run.json").read_text())["wandb_id"]

    proc = subprocess.run(
        [sys.executable, "run.py", "--resume", str(killed)],
        cwd=REPO, env=child_env(), capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"resuming {killed} from step-000004" in proc.stdout
    _assert_same_run(killed, reference, ["lora.safetensors", "diffusers/pytorch_lora_weights.safetensors"])
    # the same W&B run goes on: its id is kept, both sessions logged under it
    assert json.loads((killed / "run.json").read_text())["wandb_id"] == first_id
    sessions = sorted((killed / "wandb").glob("offline-run-*"))
    assert len(sessions) == 2 and all(p.name.endswith(first_id) for p in sessions)


@pytest.mark.slow
def test_a_killed_full_finetune_with_ema_resumes_to_the_same_weights(tmp_path, toy_images, compose):
    overrides = [*FINETUNE, f"data.dir={toy_images}", "logger=none"]
    reference = train_run(compose(*overrides), tmp_path / "reference").run_dir
    killed = tmp_path / "killed"
    _killed_run(overrides, killed)
    resume_run(killed, notify=lambda *_: None)
    _assert_same_run(killed, reference, ["unet/diffusion_pytorch_model.safetensors"])
    state = sorted(p.name for p in (killed / "checkpoints/final/state").iterdir())
    assert state == ["callbacks.pt", "rng-0.pt", "trainable.safetensors", "trainer.pt"]


def _fake_run(tmp_path, compose, toy_images, *, with_state: bool) -> Path:
    """A run folder with its config and a checkpoint (its state marked complete or absent)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(compose(*LORA, f"data.dir={toy_images}", "logger=none"), run_dir)
    state = run_dir / "checkpoints" / "step-000002" / "state"
    state.mkdir(parents=True)
    if with_state:
        (state / "callbacks.pt").write_bytes(b"")
    return run_dir


def test_resuming_without_a_saved_state_is_a_one_line_error(tmp_path, toy_images, compose, capsys):
    run_dir = _fake_run(tmp_path, compose, toy_images, with_state=False)
    with pytest.raises(SystemExit) as exit_info:
        resume_main(["--resume", str(run_dir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "holds no checkpoint with the training state" in err and "train.save_state=true" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(UserError, match="not a run folder"):
        resume_run(tmp_path / "nowhere")
    assert resume_main(["model=tiny"]) is False  # no resume asked for: run.py goes on to Hydra


def test_a_resume_whose_overrides_disagree_with_the_run_is_refused(tmp_path, toy_images, compose, capsys):
    run_dir = _fake_run(tmp_path, compose, toy_images, with_state=True)
    for override, message in [
        ("train.lr=0.5", "train.lr: the run was trained with 0.001, not 0.5"),
        ("method=finetune", "method: the run was trained with 'lora', not 'finetune'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            resume_main([f"train.resume={run_dir}", override])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    from sdexp.resume import resumed_config

    cfg = resumed_config(run_dir, ["train.max_minutes=5", "train.lr=1e-3", "method=lora"])
    assert cfg.train.max_minutes == 5 and cfg.train.lr == 1e-3 and cfg.train.resume is None


def test_early_stopping_counts_on_from_its_saved_state(tmp_path):
    """Patience used before the kill still counts after it (the state goes through callbacks.pt)."""
    from types import SimpleNamespace

    from sdexp.callbacks import EarlyStopping
    from sdexp.training_state import _load, _save, callback_states, load_callback_states

    def trainer_at(step):
        return SimpleNamespace(state=SimpleNamespace(step=step, stop_reason=None), should_stop=False)

    before = EarlyStopping("val/loss", "min", patience=2)
    before.on_validation_end(trainer_at(1), None, {"val/loss": 1.0})
    before.on_validation_end(trainer_at(2), None, {"val/loss": 1.5})  # one check without improvement
    _save(callback_states([before]), tmp_path / "callbacks.pt")
    resumed, fresh = (
        EarlyStopping("val/loss", "min", patience=2),
        EarlyStopping("val/loss", "min", patience=2),
    )
    load_callback_states([resumed], _load(tmp_path / "callbacks.pt"))
    stopped, going_on = trainer_at(3), trainer_at(3)
    resumed.on_validation_end(stopped, None, {"val/loss": 1.2})
    fresh.on_validation_end(going_on, None, {"val/loss": 1.2})
    assert stopped.should_stop and "on 1 (step 1)" in stopped.state.stop_reason
    assert not going_on.should_stop
