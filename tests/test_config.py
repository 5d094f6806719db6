"""Composition, overrides and validation of run configs (bad input: one line, exit 2)."""

from __future__ import annotations

import pytest

from sdexp.config import LoraMethodConfig, RunConfig
from sdexp.errors import ConfigError


def test_defaults_compose_to_a_typed_lora_run(compose):
    cfg = compose()
    assert isinstance(cfg, RunConfig)
    assert isinstance(cfg.method, LoraMethodConfig)
    assert (cfg.model.name, cfg.method.targets, cfg.logger.name) == ("tiny", "transformer", "wandb")


def test_the_documented_override_line_applies_every_value(compose, tmp_path):
    cfg = compose(
        "model=tiny",
        f"data.dir={tmp_path}",
        "data.prompt=a photo of sks toy",
        "method.rank=8",
        "method.targets=transformer",
        "train.lr=1e-4",
        "train.steps=500",
        "train.scheduler=cosine",
        "train.seed=1",
        "train.resolution=512",
        "logger=wandb",
    )
    assert cfg.data.dir == str(tmp_path) and cfg.data.prompt == "a photo of sks toy"
    assert (cfg.method.rank, cfg.train.lr, cfg.train.steps) == (8, 1e-4, 500)
    assert (cfg.train.scheduler, cfg.train.seed, cfg.train.resolution) == ("cosine", 1, 512)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lr=0", "train.lr"),
        ("method.rank=0", "method.rank"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("data.crop=left", "data.crop"),
        ("train.resolution=100", "train.resolution"),
        ("train.warmup_steps=600", "train.warmup_steps"),
        ("model=sd15", "model.path"),
    ],
)
def test_bad_values_name_the_key(compose, override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        compose(override)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.foo=1", "train.foo: unknown key"),
        ("+train.extra=3", "train.extra: unknown key"),
        ("train.lr=abc", "train.lr"),
        ("train.steps=1.5", "train.steps"),
        ("model=nosuch", "model=nosuch: no such option; choose one of sd15, sd2, sdxl, tiny, tiny_sd2"),
        ("train.scheduler=bogus", "train.scheduler: 'bogus' is not one of"),
    ],
)
def test_run_py_reports_bad_overrides_in_one_line_with_exit_2(cli, tmp_path, override, fragment):
    proc = cli(["run.py", override, f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_saved_config_is_typed_back_identically(compose, tmp_path):
    from omegaconf import OmegaConf

    from sdexp.config import to_run_config
    from sdexp.run import save_config

    cfg = compose("method.rank=8", "train.lr=3e-4", f"data.dir={tmp_path}", "train.sample_prompts=[a,b]")
    path = save_config(cfg, tmp_path)
    assert to_run_config(OmegaConf.load(path)) == cfg


def test_unknown_method_is_refused():
    from sdexp.config import to_run_config

    with pytest.raises(ConfigError, match="method.name"):
        to_run_config({"method": {"name": "nope"}})
