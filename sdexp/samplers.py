"""Inference schedulers by the short names people know from the UIs (samples, generate, later eval)."""

from __future__ import annotations

# name → (diffusers class, extra config, AUTOMATIC1111 sampler name)
SAMPLERS = {
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        "DPM++ 2M",
    ),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
}


def a1111_name(name: str) -> str:
    return SAMPLERS[name][2]


def make_scheduler(name: str, config):
    """A sampling scheduler by short name, on the base model's noise schedule (``config``)."""
    import diffusers

    from sdexp.errors import UserError

    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    cls_name, extra, _ = SAMPLERS[name]
    if config.get("rescale_betas_zero_snr"):  # a zero-SNR schedule samples from its last step
        extra = {**extra, "timestep_spacing": "trailing"}
    return getattr(diffusers, cls_name).from_config(config, **extra)
