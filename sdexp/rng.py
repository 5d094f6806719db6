"""Side jobs (validation, evaluation, samples) must not move training's random stream: the same
seed gives the same weights whether or not they run."""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def isolated_rng(device: torch.device | str = "cpu"):
    """Every global RNG (torch CPU and CUDA, numpy, random) as it was before, afterwards."""
    device = torch.device(device)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
