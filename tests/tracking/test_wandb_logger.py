"""W&B mode resolution, credential detection and an offline round trip through the .wandb record log."""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from PIL import Image

from sdexp.errors import ConfigError
from sdexp.tracking import WandbLogger, has_wandb_credentials, read_offline_run, resolve_wandb_mode

REPO = Path(__file__).resolve().parents[2]
_WANDB_ENV = ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_DISABLED")


@pytest.fixture
def no_creds(monkeypatch, tmp_path):
    """A machine with no W&B credentials anywhere: fresh HOME, NETRC pointing at a missing file."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-such-netrc"))
    for name in _WANDB_ENV:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _netrc(tmp_path, monkeypatch, text: str) -> None:
    path = tmp_path / "netrc"
    path.write_text(text)
    path.chmod(0o600)
    monkeypatch.setenv("NETRC", str(path))


def test_credentials_absent(no_creds, no_network):
    assert has_wandb_credentials() is False


def test_credentials_from_env(no_creds, no_network, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "   ")
    assert has_wandb_credentials() is False
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert has_wandb_credentials() is True


@pytest.mark.parametrize("machine", ["api.wandb.ai", "api.forge.coreweave.com"])
def test_credentials_from_netrc_for_default_host(no_creds, no_network, monkeypatch, tmp_path, machine):
    _netrc(tmp_path, monkeypatch, f"machine {machine}\n  login user\n  password {'k' * 40}\n")
    assert has_wandb_credentials() is True


def test_netrc_for_other_host_or_broken_is_not_credentials(no_creds, no_network, monkeypatch, tmp_path):
    _netrc(tmp_path, monkeypatch, "machine github.com login me password secret\n")
    assert has_wandb_credentials() is False
    _netrc(tmp_path, monkeypatch, "machine api.wandb.ai login\n")  # malformed
    assert has_wandb_credentials() is False


def test_netrc_follows_wandb_base_url(no_creds, no_network, monkeypatch, tmp_path):
    _netrc(tmp_path, monkeypatch, "machine wandb.example.com login user password abc\n")
    assert has_wandb_credentials() is False
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com/")
    assert has_wandb_credentials() is True
    _netrc(tmp_path, monkeypatch, "machine api.wandb.ai login user password abc\n")
    assert has_wandb_credentials() is False


def test_home_netrc_used_when_netrc_env_unset(no_creds, no_network, monkeypatch):
    monkeypatch.delenv("NETRC")
    netrc_file = no_creds / ".netrc"
    netrc_file.write_text("machine api.wandb.ai login user password abc\n")
    netrc_file.chmod(0o600)
    assert has_wandb_credentials() is True


def test_resolve_auto_without_credentials_goes_offline_with_notice(no_creds, tmp_path):
    mode, notice = resolve_wandb_mode("auto", run_dir=tmp_path / "run")
    assert mode == "offline"
    where = tmp_path / "run" / "wandb"
    assert (
        notice
        == f"W&B: no credentials found; logging offline to {where} (sync later with `wandb sync {where}`)"
    )
    assert "\n" not in notice


def test_resolve_modes(no_creds, monkeypatch):
    assert resolve_wandb_mode("offline") == ("offline", None)
    assert resolve_wandb_mode("disabled") == ("disabled", None)
    mode, notice = resolve_wandb_mode("online")  # asked for online, cannot log in: never prompt
    assert mode == "offline" and "wandb.mode=online but no credentials" in notice

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == ("online", None)
    assert resolve_wandb_mode("online") == ("online", None)
    assert resolve_wandb_mode("offline") == ("offline", None)

    for env, expected in [
        ("offline", "offline"),
        ("dryrun", "offline"),
        ("disabled", "disabled"),
        ("online", "online"),
    ]:
        monkeypatch.setenv("WANDB_MODE", env)
        assert resolve_wandb_mode("auto") == (expected, None)
    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolve_wandb_mode("offline") == ("offline", None)  # explicit config beats the env var
    monkeypatch.delenv("WANDB_API_KEY")
    mode, notice = resolve_wandb_mode("auto")
    assert mode == "offline" and "WANDB_MODE=online but no credentials" in notice

    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match="WANDB_MODE"):
        resolve_wandb_mode("auto")
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    assert resolve_wandb_mode("auto") == ("disabled", None)
    with pytest.raises(ConfigError, match="wandb.mode"):
        resolve_wandb_mode("cloud")


def test_disabled_logger_is_a_no_op(no_creds, tmp_path):
    log = WandbLogger(
        run_dir=tmp_path / "run",
        project="p",
        entity=None,
        group=None,
        name=None,
        tags=[],
        config={},
        mode="disabled",
        notify=pytest.fail,
    )
    log.log_metrics({"loss": 1.0}, step=0)
    log.log_summary({"x": 1})
    log.finish()
    assert log.run is None and log.run_path is None and log.offline_dir is None
    assert not (tmp_path / "run" / "wandb").exists()


def test_offline_round_trip(no_creds, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # belt and braces: nothing to reach
    run_dir = tmp_path / "run"
    config = {"lr": 1e-4, "rank": 4, "model": {"name": "sd15", "resolution": 512}, "tags_note": "x"}
    notices: list[str] = []
    log = WandbLogger(
        run_dir=run_dir,
        project="sdexp-test",
        entity=None,
        group="lora-sweep",
        name="trial-3",
        tags=["lora", "unit"],
        config=config,
        notify=notices.append,
    )
    assert log.mode == "offline"
    assert log.run_path.parent == run_dir / "wandb" and log.run_path.name.startswith("offline-run-")
    assert log.offline_dir == log.run_path
    assert notices == [
        f"W&B: no credentials found; logging offline to {log.run_path} "
        f"(sync later with `wandb sync {log.run_path}`)"
    ]

    logged = [{"train/loss": 1.0 / (s + 3), "lr": 1e-4 * (s + 1), "epoch": s // 2} for s in range(5)]
    for step, metrics in enumerate(logged):
        log.log_metrics(metrics, step=step)
    log.log_images("samples", [Image.new("RGB", (8, 8), (0, 255, 0))], step=4, captions=["a green square"])
    log.log_summary({"best_clip": 0.3125, "final_loss": 0.142857})
    log.finish(exit_code=0)
    assert len(notices) == 1  # offline is said once, at start
    log.finish()  # idempotent

    got = read_offline_run(run_dir)
    assert [row["_step"] for row in got["history"]] == [0, 1, 2, 3, 4]
    internal = {"_step", "_runtime", "_timestamp", "samples"}
    for row, metrics in zip(got["history"], logged, strict=True):
        assert {k: v for k, v in row.items() if k not in internal} == metrics
    images = got["history"][4]["samples"]
    assert images["_type"] == "images/separated" and images["count"] == 1
    assert images["captions"] == ["a green square"]
    assert all(k not in row for row in got["history"][:4] for k in ("samples",))
    with Image.open(log.run_path / "files" / images["filenames"][0]) as im:
        assert im.size == (8, 8) and im.convert("RGB").getpixel((3, 3)) == (0, 255, 0)

    assert got["config"] == config
    assert got["run"]["project"] == "sdexp-test"
    assert got["run"]["group"] == "lora-sweep" and got["run"]["name"] == "trial-3"
    assert got["run"]["tags"] == ["lora", "unit"]
    assert got["summary"]["best_clip"] == 0.3125 and got["summary"]["final_loss"] == 0.142857
    assert got["summary"]["train/loss"] == logged[-1]["train/loss"]  # wandb's last-value summary
    assert got["exit_code"] == 0
    assert read_offline_run(log.run_path) == got  # run folder or the sdexp run dir both work


_CHILD = textwrap.dedent(
    """
    import sys
    from sdexp.tracking import WandbLogger, read_offline_run
    for i, mode in enumerate(["auto", "online"]):
        log = WandbLogger(run_dir=sys.argv[1] + f"/run{i}", project="p", entity=None, group="g", name=None,
                          tags=["t"], config={"mode": mode}, mode=mode)
        log.log_metrics({"loss": 0.5}, step=1)
        log.finish()
        assert read_offline_run(log.run_path)["history"][0]["loss"] == 0.5
        print("DONE", mode, log.mode, flush=True)
    """
)


@pytest.mark.parametrize("stdin", ["pty", "pipe"])
def test_never_waits_for_stdin(no_creds, tmp_path, stdin):
    """No credentials + a terminal (or an open, silent pipe) on stdin: must finish, never prompt for a key."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "WANDB_BASE_URL": "http://127.0.0.1:9",
    }
    master = slave = drainer = None
    terminal: list[bytes] = []  # the child's stderr in the pty case, for the failure message
    if stdin == "pty":  # wandb only prompts when stdin and stderr are terminals
        master, slave = pty.openpty()
        kwargs = {"stdin": slave, "stderr": slave}
        drainer = threading.Thread(target=_drain, args=(master, terminal), daemon=True)
        drainer.start()
    else:
        kwargs = {"stdin": subprocess.PIPE, "stderr": subprocess.STDOUT}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
        text=True,
        **kwargs,
    )
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"WandbLogger blocked (waiting for input?); output so far:\n{out}")
    finally:
        if slave is not None:
            os.close(slave)
            drainer.join(timeout=5)
            os.close(master)
    assert proc.returncode == 0, out + b"".join(terminal).decode(errors="replace")[-3000:]
    assert "DONE auto offline" in out and "DONE online offline" in out
    assert "wandb.mode=online but no credentials found" in out


def _drain(fd: int, sink: list[bytes] | None = None) -> None:
    """Read a pty until it closes (a full pty would block the child); keep what was read in ``sink``."""
    try:
        while chunk := os.read(fd, 4096):
            if sink is not None:
                sink.append(chunk)
    except OSError:
        pass


_FALLBACK_CHILD = textwrap.dedent(
    """
    import sys
    from sdexp.tracking import WandbLogger, read_offline_run
    log = WandbLogger(run_dir=sys.argv[1], project="p", entity=None, group=None, name=None, tags=[],
                      config={"a": 1}, mode="auto", init_timeout=3)
    log.log_metrics({"loss": 0.25}, step=7)
    log.finish()
    got = read_offline_run(sys.argv[1])
    assert got["history"][0]["loss"] == 0.25 and got["history"][0]["_step"] == 7, got
    print("DONE", log.mode, log.run_path.name, flush=True)
    """
)


def test_unreachable_server_falls_back_to_offline(no_creds, tmp_path):
    """Credentials present but the server refuses connections: training goes on, logged offline."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "WANDB_API_KEY": "k" * 40,
        "WANDB_BASE_URL": "http://127.0.0.1:9",  # local port nothing listens on
    }
    proc = subprocess.run(
        [sys.executable, "-c", _FALLBACK_CHILD, str(tmp_path / "run")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "DONE offline offline-run-" in out
    notice = next(line for line in out.splitlines() if line.startswith("W&B: could not start an online run"))
    assert "logging offline to" in notice and "wandb sync" in notice
    offline = [p for p in (tmp_path / "run" / "wandb").glob("offline-run-*")]
    assert (
        len(offline) == 1
    )  # the one run, logged offline (a stale online handshake folder is cleaned best-effort)


def _scored_run(run_dir: Path) -> None:
    """A run folder whose best checkpoint (step 6) was copied to best/, as CheckpointScoring leaves it."""
    (run_dir / "best" / "diffusers").mkdir(parents=True)
    (run_dir / "best" / "lora.safetensors").write_bytes(b"weights")
    (run_dir / "best" / "diffusers" / "pytorch_lora_weights.safetensors").write_bytes(b"copy")
    best = {"step": 6, "checkpoint": "step-000006", "objectives": {"subject": 0.5}, "feasible": True}
    (run_dir / "best.json").write_text(json.dumps(best))


def test_eval_table_hparams_and_best_checkpoint_artifact(no_creds, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from sdexp.tracking.base import eval_images

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    run_dir = tmp_path / "run"
    _scored_run(run_dir)
    log = WandbLogger(
        run_dir=run_dir,
        project="p",
        name="r/1",
        config={"train": {"lr": 0.1}},
        hparams={"lr": 0.1},
        log_model=True,
    )
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    result = SimpleNamespace(
        subject=[red], subject_prompts=["a sks star"], prior=[blue], prior_prompts=["a star"]
    )
    rows = eval_images(result, SimpleNamespace(subject_seeds=[7], prior_seeds=[9]))
    assert [(r.set, r.prompt, r.seed) for r in rows] == [("subject", "a sks star", 7), ("prior", "a star", 9)]
    log.log_eval_table(6, rows)
    log.finish(exit_code=0)

    got = read_offline_run(run_dir)
    assert got["config"] == {"train": {"lr": 0.1}, "lr": 0.1}
    (cell,) = [row["eval/images"] for row in got["history"] if "eval/images" in row]
    table = json.loads((log.run_path / "files" / cell["path"]).read_text())
    assert table["columns"] == ["step", "set", "prompt", "seed", "image"]
    assert [r[:4] for r in table["data"]] == [[6, "subject", "a sks star", 7], [6, "prior", "a star", 9]]
    (model,) = [a for a in got["artifacts"] if a["type"] == "model"]
    assert model["name"] == "model-r-1" and {"best", "step-000006"} <= set(model["aliases"])
    assert model["files"]["lora.safetensors"] == str(run_dir / "best" / "lora.safetensors")  # by reference
    assert set(model["files"]) == {"lora.safetensors", "best.json"} and model["metadata"]["step"] == 6


@pytest.mark.parametrize("log_model, exit_code", [(False, 0), (True, 1)])
def test_no_artifact_when_turned_off_or_the_run_failed(no_creds, tmp_path, monkeypatch, log_model, exit_code):
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    _scored_run(tmp_path / "run")
    log = WandbLogger(run_dir=tmp_path / "run", project="p", log_model=log_model)
    log.finish(exit_code=exit_code)
    assert not [a for a in read_offline_run(tmp_path / "run")["artifacts"] if a["type"] == "model"]
