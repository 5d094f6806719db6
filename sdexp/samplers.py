"""Inference schedulers by the short names people know from the UIs (used for samples and generate)."""

from __future__ import annotations

SAMPLER_NAMES = ("euler", "euler_a", "dpmpp_2m", "ddim")
A1111_NAMES = {"euler": "Euler", "euler_a": "Euler a", "dpmpp_2m": "DPM++ 2M", "ddim": "DDIM"}


def make_scheduler(name: str, config):
    """A diffusers scheduler for ``name`` built from the base model's scheduler ``config``."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
    )

    classes = {
        "euler": EulerDiscreteScheduler,
        "euler_a": EulerAncestralDiscreteScheduler,
        "dpmpp_2m": DPMSolverMultistepScheduler,
        "ddim": DDIMScheduler,
    }
    if name not in classes:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    return classes[name].from_config(config)
