"""train=vram12 as shipped: its composed values on each job it is for, equal to docs/performance.md's
table, and its CUDA-only optimizer refused on a CPU with a message (the matrix runs it there with
adamw instead: tests/e2e/test_shipped_configs.py, id train-vram12-cpu-stand-in)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JOBS = {
    "sd15-lora": ["model=sd15", "model.path=/models/sd15.safetensors", "method=lora"],
    "sd15-finetune": [
        "model=sd15",
        "model.path=/models/sd15.safetensors",
        "method=finetune",
        "method.ema_decay=0",
    ],
    "sdxl-lora": ["model=sdxl", "model.path=/models/sdxl.safetensors", "method=lora"],
}


def documented_values(preset: str) -> dict[str, str]:
    """The `| \\`key\\` | \\`value\\` | why |` rows of docs/performance.md's preset table."""
    text = (REPO / "docs" / "performance.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| key |"))
    column = [c.strip() for c in header.strip("|").split("|")].index(f"`{preset}`")
    rows = {}
    for line in text.splitlines():
        match = re.match(r"\| `([a-z_.]+)` \|", line)
        if match:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[match.group(1)] = cells[column].strip("`")
    return rows


def _value(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("job", JOBS)
def test_vram12_composes_to_the_documented_values(job, compose):
    documented = documented_values("vram12")
    assert len(documented) >= 8
    cfg = compose("train=vram12", *JOBS[job])
    for key, value in documented.items():
        got = _value(cfg, key)
        assert str(got).lower() == value, (key, got, value)
    assert cfg.model.name == JOBS[job][0].split("=")[1]
    assert cfg.train.steps == 500 and cfg.train.lr == 1e-4  # the rest is train/default.yaml's
    if job == "sd15-finetune":
        assert cfg.method.ema_decay == 0


def test_command_line_overrides_win_over_the_preset(compose):
    cfg = compose("train=vram12", "train.batch_size=4", "data.cache.text=false", "train.optimizer=adamw")
    assert (cfg.train.batch_size, cfg.data.cache.text, cfg.train.optimizer) == (4, False, "adamw")
    assert cfg.train.gradient_checkpointing and cfg.data.cache.latents


def test_the_cuda_only_optimizer_is_refused_on_a_cpu_with_advice():
    from sdexp.errors import ConfigError
    from sdexp.optim import check_optimizer

    with pytest.raises(ConfigError, match="adamw8bit .*needs a CUDA device"):
        check_optimizer("adamw8bit", "cpu")
