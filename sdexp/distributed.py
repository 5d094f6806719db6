"""One run trained by several processes (``torchrun``, ``accelerate launch``): who they are, and the
few things they must agree on.

Every process runs the whole run: the same config, data order, seeds and decisions. Only the main
process (rank 0) writes files, logs and scores; what it decides or measures (the run folder, a stop,
the scores) reaches the others through ``broadcast``. With one process every helper here is a
no-op, so single-process numerics stay exactly as they were.
"""

from __future__ import annotations

import os

import torch


def launched_processes() -> int:
    """How many processes the launcher started (torchrun/accelerate set ``WORLD_SIZE``); readable
    before any process group exists (run.py decides with it what Hydra may create)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def launched_rank() -> int:
    """This process's global rank as the launcher set it (0 without a launcher)."""
    return int(os.environ.get("RANK", "0") or 0)


def is_launched_main() -> bool:
    return launched_rank() == 0


def active() -> bool:
    """Whether a process group of more than one process exists (collectives are needed)."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def start_process_group(cpu: bool) -> None:
    """Create the process group the trainer's ``Accelerator`` will use (gloo on the CPU, nccl on
    GPUs), so values can be broadcast before the trainer exists; nothing without a launcher."""
    if launched_processes() > 1:
        from accelerate import PartialState

        PartialState(cpu=cpu)


def broadcast(value, src: int = 0):
    """``value`` as process ``src`` holds it, on every process (any picklable object)."""
    if not active():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def gather(value) -> list:
    """Every process's ``value``, in rank order, on every process."""
    if not active():
        return [value]
    out = [None] * world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def mean_across_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``tensor`` over the processes (a non-finite value anywhere stays
    non-finite everywhere, so every process sees a bad loss at the same step)."""
    if not active():
        return tensor
    total = tensor.clone()
    torch.distributed.all_reduce(total)
    return total / world_size()
