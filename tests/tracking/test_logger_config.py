"""Which trackers a run gets: the logger group's config shapes (one backend, both, none), the keys
that keep working beside them, bad input at the door, and the loggers `_build_logger` makes of them."""

from __future__ import annotations

import pytest

from sdexp.errors import ConfigError


@pytest.mark.parametrize(
    "overrides, backends",
    [
        ([], ("wandb",)),  # the default
        (["logger=wandb"], ("wandb",)),
        (["logger=none"], ()),
        (["logger=tensorboard"], ("tensorboard",)),
        (["logger=[wandb,tensorboard]"], ("wandb", "tensorboard")),
        (["logger=[tensorboard,wandb]"], ("wandb", "tensorboard")),
        (["logger.tensorboard=true"], ("wandb", "tensorboard")),
        (["logger=[wandb,tensorboard]", "logger.wandb=false"], ("tensorboard",)),
    ],
)
def test_logger_shapes_compose_to_their_backends(compose, overrides, backends):
    lg = compose(*overrides).logger
    assert lg.backends == backends
    assert lg.name == ("+".join(backends) or "none")


def test_wandb_keys_apply_beside_both_backends(compose):
    lg = compose(
        "logger=[wandb,tensorboard]",
        "logger.group=g",
        "logger.run_name=r",
        "logger.tags=[a,b]",
        "logger.mode=offline",
        "logger.project=p",
        "logger.hparams=[train.lr,method.rank]",
    ).logger
    assert (lg.group, lg.run_name, lg.tags, lg.mode, lg.project) == ("g", "r", ["a", "b"], "offline", "p")
    assert lg.hparams == ["train.lr", "method.rank"] and lg.log_model is True


@pytest.mark.parametrize(
    "override, message",
    [
        ("logger=[wandb,mlflow]", "logger=mlflow: no such option; choose one of none, tensorboard, wandb"),
        ("logger.mlflow=true", "logger.mlflow: unknown key"),
        ("logger.tensorboard=maybe", "logger.tensorboard"),
        ("logger.hparams=[train.lrr]", "logger.hparams: 'train.lrr' is not a config key"),
        ("logger.mode=sometimes", "logger.mode"),
    ],
)
def test_bad_logger_input_names_the_key(compose, override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        compose(override)


def _build(compose, tmp_path, *overrides):
    from sdexp.config import as_plain_dict
    from sdexp.run import _build_logger

    cfg = compose(*overrides)
    return _build_logger(cfg.logger, as_plain_dict(cfg), tmp_path / "run", notify=lambda *_: None)


def test_build_logger_makes_the_trackers_asked_for(compose, tmp_path, monkeypatch):
    from sdexp.tracking import RunFolderLogger, TensorBoardLogger, WandbLogger, read_offline_run

    logger, trackers = _build(compose, tmp_path / "a", "logger=none")
    assert trackers is None and [type(x) for x in logger.loggers] == [RunFolderLogger]
    logger.finish()

    logger, trackers = _build(compose, tmp_path / "b", "logger=tensorboard")
    assert [type(x) for x in trackers.loggers] == [TensorBoardLogger] and trackers.run_id is None
    logger.finish()
    assert list((tmp_path / "b" / "run" / "tensorboard").glob("events.out.tfevents.*"))

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    logger, trackers = _build(
        compose, tmp_path / "c", "logger=[wandb,tensorboard]", "logger.hparams=[train.lr,method.rank]"
    )
    wandb_logger, tb = trackers.loggers
    assert isinstance(wandb_logger, WandbLogger) and isinstance(tb, TensorBoardLogger)
    assert trackers.run_id == wandb_logger.run_id is not None  # what a resumed run goes on logging to
    assert tb.hparams == {"train.lr": 1e-4, "method.rank": 4}
    logger.finish()
    config = read_offline_run(tmp_path / "c" / "run")["config"]
    assert (config["lr"], config["rank"], config["train"]["lr"]) == (1e-4, 4, 1e-4)


def test_a_config_saved_with_logger_name_still_loads():
    """Run folders written before the backends became flags (config.yaml with logger.name) are resumed,
    rescored and gridded: name wandb means the W&B flag, name none means no tracker."""
    from omegaconf import OmegaConf

    from sdexp.config import as_plain_dict, to_run_config
    from sdexp.entry import compose_run_config

    saved = as_plain_dict(compose_run_config(["model=tiny", "data.dir=/tmp/x"]))
    for name, flags in (("wandb", (True, False)), ("none", (False, False))):
        old = OmegaConf.create(saved)
        old.logger = {k: v for k, v in saved["logger"].items() if k not in ("wandb", "tensorboard")}
        old.logger.name = name
        cfg = to_run_config(old)
        assert (cfg.logger.wandb, cfg.logger.tensorboard) == flags
    old.logger.name = "mlflow"
    with pytest.raises(ConfigError, match="logger.name"):
        to_run_config(old)
