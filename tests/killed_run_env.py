"""The environment for a run a test kills and another process resumes."""

from __future__ import annotations

import os


def child_env() -> dict[str, str]:
    """This process's environment with one torch thread and without ``WANDB_SERVICE``: a test
    process that used W&B exports its wandb-core service, and a child that joins it and is
    SIGKILLed leaves its run id claimed there, so the resuming child is told "run ID is in use".
    A user's killed run has its own service, which dies with it."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env["OMP_NUM_THREADS"] = "1"
    return env
