"""Shared fixtures: a toy image folder, composed run configs, offline environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture()
def toy_images(tmp_path) -> Path:
    from sdexp.demo import write_demo_images

    return write_demo_images(tmp_path / "images", n=6)


def compose_run_config(*overrides: str):
    """The validated RunConfig that run.py would build for ``overrides``."""
    from hydra import compose, initialize_config_dir

    from sdexp.config import register_schemas, to_run_config

    register_schemas()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return to_run_config(cfg)


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
