"""The learning-rate schedules named in the config behave as their names say."""

from __future__ import annotations

import pytest
import torch

from sdexp.config import TrainConfig
from sdexp.optim import build_optimizer_and_scheduler


def _lrs(**kw):
    cfg = TrainConfig(lr=1.0, steps=10, **kw)
    param = torch.nn.Parameter(torch.zeros(1))
    opt, sched = build_optimizer_and_scheduler([{"params": [param], "name": "unet"}], cfg)
    out = []
    for _ in range(10):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_constant_keeps_the_rate():
    assert _lrs(scheduler="constant") == [1.0] * 10


@pytest.mark.parametrize(
    "name", ["constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]
)
def test_warmup_ramps_up_from_zero(name):
    lrs = _lrs(scheduler=name, warmup_steps=4)
    assert lrs[0] == 0.0 and lrs[1] < lrs[2] < lrs[3] < lrs[4]
    assert lrs[4] == pytest.approx(1.0)


def test_linear_and_cosine_decay_towards_zero():
    for name in ("linear", "cosine"):
        lrs = _lrs(scheduler=name)
        assert lrs[0] == 1.0 and all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.2


def test_cosine_with_restarts_restarts():
    lrs = _lrs(scheduler="cosine_with_restarts", num_cycles=2)
    assert any(b > a for a, b in zip(lrs, lrs[1:]))


def test_text_encoder_group_keeps_its_own_rate():
    cfg = TrainConfig(lr=1e-4, steps=5)
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt, _ = build_optimizer_and_scheduler([{"params": [a]}, {"params": [b], "lr": 5e-5}], cfg)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 5e-5]


@pytest.mark.parametrize("name", ["adamw", "adafactor", "prodigy"])
def test_each_optimizer_minimises_a_quadratic_with_per_group_rates(name):
    """Every train.optimizer trains (a quadratic's loss falls) and keeps each group's own lr."""
    lr = 1.0 if name == "prodigy" else 0.05  # prodigy estimates its step size; lr scales it
    cfg = TrainConfig(lr=lr, steps=50, optimizer=name, weight_decay=0.0)
    a, b = torch.nn.Parameter(torch.full((4,), 3.0)), torch.nn.Parameter(torch.full((4,), -2.0))
    te_lr = lr if name == "prodigy" else lr / 2  # prodigy refuses per-group rates (tested below)
    groups = [{"params": [a], "name": "unet"}, {"params": [b], "name": "text_encoder", "lr": te_lr}]
    opt, sched = build_optimizer_and_scheduler(groups, cfg)
    assert [g["lr"] for g in opt.param_groups] == [lr, te_lr]
    start = ((a**2).sum() + (b**2).sum()).item()
    for _ in range(50):
        loss = (a**2).sum() + (b**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert ((a**2).sum() + (b**2).sum()).item() < 0.5 * start


def test_prodigy_refuses_a_separate_text_encoder_rate():
    from sdexp.errors import ConfigError

    cfg = TrainConfig(lr=1.0, steps=5, optimizer="prodigy")
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(1))]},
        {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.5},
    ]
    with pytest.raises(ConfigError, match="prodigy adapts one step size"):
        build_optimizer_and_scheduler(groups, cfg)


def test_8bit_adamw_needs_cuda_and_says_so():
    from sdexp.errors import ConfigError
    from sdexp.optim import check_optimizer

    with pytest.raises(ConfigError, match="adamw8bit .*needs a CUDA device"):
        check_optimizer("adamw8bit", "cpu")
    check_optimizer("adafactor", "cpu")  # the others run anywhere


def test_an_unknown_optimizer_is_refused_at_the_door(compose):
    from sdexp.errors import ConfigError

    with pytest.raises(
        ConfigError, match="train.optimizer: 'sgd' is not one of adamw, adamw8bit, adafactor, prodigy"
    ):
        compose("data.dir=/tmp", "train.optimizer=sgd")


def test_a_sweep_or_run_with_8bit_adamw_on_cpu_fails_before_loading(compose, toy_images):
    from sdexp.errors import ConfigError
    from sdexp.run import preflight

    cfg = compose(
        f"data.dir={toy_images}", "data.prompt=a toy", "train.optimizer=adamw8bit", "train.device=cpu"
    )
    with pytest.raises(ConfigError, match="adamw8bit"):
        preflight(cfg, require_judge=False)
