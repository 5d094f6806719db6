"""The optimizers and learning-rate schedules named in the config (diffusers' get_scheduler).

Each optimizer is built from the same ``train.*`` keys, so a sweep can search across them like any
other parameter. Optional ones (bitsandbytes, prodigyopt) are imported only when asked for, and a
missing package or device is a one-line error that says what to install or set.
"""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler

from sdexp.errors import ConfigError


def check_optimizer(name: str, device: torch.device | str) -> None:
    """Fail before any model loads when the optimizer cannot run here."""
    if name == "adamw8bit":
        if torch.device(device).type != "cuda":
            raise ConfigError(
                "train.optimizer: adamw8bit (bitsandbytes) needs a CUDA device; "
                "use train.optimizer=adamw or adafactor on this machine"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError(
                "train.optimizer: adamw8bit needs bitsandbytes; `pip install bitsandbytes` "
                "or use train.optimizer=adamw"
            ) from None
    if name == "prodigy":
        try:
            import prodigyopt  # noqa: F401
        except ImportError:
            raise ConfigError("train.optimizer: prodigy needs prodigyopt; `pip install prodigyopt`") from None


FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def adamw_implementation(param_groups: list[dict], setting: str) -> dict:
    """torch AdamW's ``foreach``/``fused`` arguments for ``train.adamw_impl``.

    ``auto`` is fused (one kernel for all tensors) when every parameter is a floating CUDA tensor,
    else foreach (a few multi-tensor kernels). Both compute the per-tensor loop's update; the
    order of floating-point operations differs, so weights agree to rounding, not bit for bit
    (``for_loop`` is torch's CPU default before sdexp chose one)."""
    params = [p for g in param_groups for p in g["params"]]
    if setting == "auto":
        cuda = bool(params) and all(p.is_cuda and p.dtype in FUSED_DTYPES for p in params)
        setting = "fused" if cuda else "foreach"
    if setting == "fused":
        if not all(p.dtype in FUSED_DTYPES for p in params):
            raise ConfigError("train.adamw_impl: fused needs floating-point parameters; use foreach")
        return {"fused": True}
    return {"foreach": setting == "foreach"}


def build_optimizer(param_groups: list[dict], train_cfg) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``param_groups`` (each may carry its own lr)."""
    t = train_cfg
    if t.optimizer == "adamw":
        return torch.optim.AdamW(
            param_groups,
            lr=t.lr,
            betas=(t.adam_beta1, t.adam_beta2),
            eps=t.adam_epsilon,
            weight_decay=t.weight_decay,
            **adamw_implementation(param_groups, t.adamw_impl),
        )
    if t.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(
            param_groups,
            lr=t.lr,
            betas=(t.adam_beta1, t.adam_beta2),
            eps=t.adam_epsilon,
            weight_decay=t.weight_decay,
        )
    if t.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        # A fixed learning rate (the schedule comes from train.scheduler), as diffusion trainers use it.
        return Adafactor(
            param_groups,
            lr=t.lr,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
            weight_decay=t.weight_decay,
        )
    if t.optimizer == "prodigy":
        from prodigyopt import Prodigy

        rates = {g.get("lr", t.lr) for g in param_groups} - {0}
        if len(rates) > 1:
            raise ConfigError(
                "train.optimizer: prodigy adapts one step size for all parameters; leave method.text_encoder_lr "
                "unset (or 0 to freeze) or use another optimizer"
            )

        # Prodigy estimates the step size itself; train.lr multiplies it (1.0 is the intended value).
        return Prodigy(
            param_groups,
            lr=t.lr,
            betas=(t.adam_beta1, t.adam_beta2),
            weight_decay=t.weight_decay,
            d_coef=t.prodigy_d_coef,
            safeguard_warmup=t.warmup_steps > 0,
            use_bias_correction=True,
        )
    raise ConfigError(f"train.optimizer: unknown optimizer {t.optimizer!r}")


def build_optimizer_and_scheduler(param_groups: list[dict], train_cfg):
    """The configured optimizer over ``param_groups`` and a per-step lr schedule."""
    t = train_cfg
    optimizer = build_optimizer(param_groups, t)
    kwargs = dict(num_warmup_steps=t.warmup_steps, num_training_steps=t.steps)
    if t.scheduler == "cosine_with_restarts":
        kwargs["num_cycles"] = t.num_cycles
    if t.scheduler == "polynomial":
        kwargs["power"] = t.power
    scheduler = get_scheduler(t.scheduler, optimizer, **kwargs)
    return optimizer, scheduler
