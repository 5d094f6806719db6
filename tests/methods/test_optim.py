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
