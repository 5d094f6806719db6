"""The sweep the real-process worker tests share: the tiny model, no scoring, ~1 s a trial, and
heartbeats every second, so a dead worker's trial is noticed in ~5 s."""

from __future__ import annotations


def tiny_sweep(name: str, n_trials: int) -> dict:
    """A sweep definition (as sweeps/*.yaml holds it) over a continuous lr and three ranks."""
    return {
        "name": name,
        "overrides": [
            "model=tiny",
            "eval=none",
            "data.prompt=a photo of sks toy",
            "logger=none",
            "train.steps=12",
            "train.checkpoint_every=6",
            "data.val_images=1",
        ],
        "space": {
            "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "method.rank": [2, 4, 8],
        },
        "sampler": {"name": "random", "seed": 0},
        "n_trials": n_trials,
        "heartbeat_seconds": 1,
    }
