"""Shared fixtures: a toy image folder, composed run configs, offline environment."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One core per xdist worker (and per subprocess it starts): oversubscribed torch threads run
    # tiny tensors tens of times slower than one thread each.
    for _threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_threads] = "1"


@pytest.fixture()
def toy_images(tmp_path) -> Path:
    from toy_images import write_demo_images

    return write_demo_images(tmp_path / "images", n=6)


def compose_run_config(*overrides: str):
    """The validated RunConfig that run.py would build for ``overrides``."""
    from sdexp.entry import compose_run_config as compose_overrides

    return compose_overrides(overrides)


@pytest.fixture()
def compose():
    return compose_run_config


def run_cli(args: list[str], *, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repo root, capturing output (no stdin: nothing may prompt)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


@pytest.fixture()
def cli():
    return run_cli


@pytest.fixture()
def isolated_cli_state():
    """main() quiets the libraries for the process; give the rest of the test session its state back."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    env = dict(os.environ)
    levels = [(log, log.get_verbosity(), log.is_progress_bar_enabled()) for log in (dlog, tlog)]
    with warnings.catch_warnings():
        yield
    os.environ.clear()
    os.environ.update(env)
    for log, level, bars in levels:
        log.set_verbosity(level)
        (log.enable_progress_bar if bars else log.disable_progress_bar)()


@pytest.fixture(scope="session")
def tiny_dino_dir(tmp_path_factory) -> Path:
    """A random-weight DINOv2 (32 wide, one layer) saved as a local model folder; never modified."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=28,
        patch_size=14,
    )
    folder = tmp_path_factory.mktemp("dino") / "tiny-dinov2"
    Dinov2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors run ~100x slower when torch's threads compete on a loaded 2-core box."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_captioner_dir(tmp_path_factory) -> Path:
    """A random-weight tiny BLIP captioner (model + processor) saved as a local folder; never modified."""
    from tiny_captioner import build_tiny_blip

    return build_tiny_blip(tmp_path_factory.mktemp("captioner") / "tiny-blip")
