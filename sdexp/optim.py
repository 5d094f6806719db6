"""AdamW and the learning-rate schedules named in the config (diffusers' get_scheduler)."""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler


def build_optimizer_and_scheduler(param_groups: list[dict], train_cfg):
    """AdamW over ``param_groups`` (each may carry its own lr) and a per-step lr schedule."""
    t = train_cfg
    optimizer = torch.optim.AdamW(
        param_groups,
        lr=t.lr,
        betas=(t.adam_beta1, t.adam_beta2),
        eps=t.adam_epsilon,
        weight_decay=t.weight_decay,
    )
    kwargs = dict(num_warmup_steps=t.warmup_steps, num_training_steps=t.steps)
    if t.scheduler == "cosine_with_restarts":
        kwargs["num_cycles"] = t.num_cycles
    if t.scheduler == "polynomial":
        kwargs["power"] = t.power
    scheduler = get_scheduler(t.scheduler, optimizer, **kwargs)
    return optimizer, scheduler
