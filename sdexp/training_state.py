"""The training state a checkpoint carries with ``train.save_state``, so a killed run can resume.

    checkpoints/step-000010/state/
      trainable.safetensors   the trained parameters in fp32, as they train (not EMA, not save_dtype)
      trainer.pt              step, epoch, batches taken in the epoch, optimizer, LR scheduler,
                              GradScaler, the module's own state (noise generator, EMA, counters)
      rng-<rank>.pt           each process's python, numpy, torch CPU and CUDA RNG states
      callbacks.pt            early stopping, best-checkpoint and scoring history; written last:
                              only a folder holding it is complete

The first two are written in the checkpoint's staging folder, so they appear with the checkpoint
or not at all; the RNG and callback files once the checkpoint is saved and scored (each file
atomically), as the loop goes on from there. A run killed in between resumes from the checkpoint
before. Files load
with ``weights_only=True`` (plain containers and tensors only). accelerate's ``save_state`` is not
used: it saves every prepared model whole (a LoRA run's frozen UNet at every checkpoint) and loads
its RNG file with ``weights_only=False``.
"""

from __future__ import annotations

import io
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from sdexp.atomic import atomic_write_bytes

STATE_DIR = "state"
PARAMS_FILE, TRAINER_FILE, CALLBACKS_FILE = "trainable.safetensors", "trainer.pt", "callbacks.pt"


def is_complete(checkpoint: Path) -> bool:
    """A checkpoint that holds a full training state (its scoring finished too)."""
    return (Path(checkpoint) / STATE_DIR / CALLBACKS_FILE).is_file()


def _save(obj, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ----- RNG -----------------------------------------------------------------------------------
def capture_rng(device: torch.device) -> dict:
    """Every global RNG of this process, in plain containers (numpy's array as a tensor)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# ----- parameters ------------------------------------------------------------------------------
def trained_parameters(modules: list[torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    """The parameters that train, named ``<module index>.<parameter name>``."""
    return {
        f"{i}.{name}": p
        for i, module in enumerate(modules)
        for name, p in module.named_parameters()
        if p.requires_grad
    }


def save_parameters(modules: list[torch.nn.Module], path: Path) -> None:
    from safetensors.torch import save

    tensors = {k: p.detach().cpu().contiguous() for k, p in trained_parameters(modules).items()}
    atomic_write_bytes(path, save(tensors))


def load_parameters(modules: list[torch.nn.Module], path: Path) -> None:
    """Copy the saved values into the trained parameters; the names must match exactly."""
    from safetensors.torch import load_file

    from sdexp.errors import UserError

    saved = load_file(path)
    params = trained_parameters(modules)
    if set(saved) != set(params):
        missing = sorted(set(params) - set(saved)) or sorted(set(saved) - set(params))
        raise UserError(
            f"{path}: the saved trained parameters do not match this run's ({missing[0]} …); "
            "resume with the run's own config"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name].to(p.device, p.dtype))


# ----- the whole state --------------------------------------------------------------------------
def save_training_state(trainer, folder: Path) -> None:
    """Write the trainer's state into ``folder`` (inside a checkpoint's staging folder; main process)."""
    folder.mkdir(parents=True, exist_ok=True)
    acc = trainer.accelerator
    save_parameters(trainer.module.trainable_modules(), folder / PARAMS_FILE)
    s = trainer.state
    _save(
        {
            "step": s.step,
            "epoch": s.epoch,
            "batches_in_epoch": s.batches_in_epoch,
            "accelerator_step": acc.step,
            "last_logs": s.last_logs,
            "last_val": s.last_val,
            "checkpoints": [{"name": c["name"], "step": c["step"]} for c in s.checkpoints],
            "data_wait_seconds": s.data_wait_seconds,
            "optimizer": trainer.optimizer.state_dict(),
            "lr_scheduler": trainer.lr_scheduler.state_dict(),
            "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
            "module": trainer.module.training_state(),
            "processes": acc.num_processes,
        },
        folder / TRAINER_FILE,
    )


def complete_state(trainer, checkpoint: Path) -> None:
    """After ``checkpoint`` was saved and scored: each process's RNG states, then the callbacks'
    states, which mark the state complete; older checkpoints' states are dropped."""
    folder = Path(checkpoint) / STATE_DIR
    acc = trainer.accelerator
    _save(capture_rng(trainer.device), folder / f"rng-{acc.process_index}.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        _save(callback_states(trainer.callbacks), folder / CALLBACKS_FILE)
        drop_older_states(checkpoint)
    acc.wait_for_everyone()


def callback_states(callbacks: list) -> dict[str, dict]:
    """Each callback's ``state_dict()`` under its class name (numbered when a class repeats)."""
    states, seen = {}, {}
    for cb in callbacks:
        name = type(cb).__name__
        seen[name] = seen.get(name, 0) + 1
        key = name if seen[name] == 1 else f"{name}#{seen[name]}"
        state = cb.state_dict()
        if state:
            states[key] = state
    return states


def load_callback_states(callbacks: list, states: dict[str, dict]) -> None:
    seen: dict[str, int] = {}
    for cb in callbacks:
        name = type(cb).__name__
        seen[name] = seen.get(name, 0) + 1
        key = name if seen[name] == 1 else f"{name}#{seen[name]}"
        if key in states:
            cb.load_state_dict(states[key])


def load_training_state(trainer, checkpoint: Path) -> dict:
    """Put the state of ``checkpoint`` back into a prepared trainer (parameters, optimizer,
    scheduler, scaler, module, callbacks, progress). Returns this process's RNG states, which the
    trainer restores once the resumed epoch's data iterator exists (creating it draws from them)."""
    from sdexp.errors import UserError

    folder = Path(checkpoint) / STATE_DIR
    acc = trainer.accelerator
    saved = _load(folder / TRAINER_FILE)
    if saved["processes"] != acc.num_processes:
        raise UserError(
            f"{checkpoint}: saved by {saved['processes']} processes, resumed with {acc.num_processes}; "
            "resume with as many"
        )
    load_parameters(trainer.module.trainable_modules(), folder / PARAMS_FILE)
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    if acc.scaler is not None and saved["scaler"] is not None:
        acc.scaler.load_state_dict(saved["scaler"])
    trainer.module.on_load_checkpoint(saved["module"])
    load_callback_states(trainer.callbacks, _load(folder / CALLBACKS_FILE))
    s = trainer.state
    s.step, s.epoch, s.batches_in_epoch = saved["step"], saved["epoch"], saved["batches_in_epoch"]
    s.last_logs, s.last_val = saved["last_logs"], saved["last_val"]
    s.data_wait_seconds = saved["data_wait_seconds"]
    s.checkpoints = [
        {**c, "path": str(trainer.run_dir / "checkpoints" / c["name"])} for c in saved["checkpoints"]
    ]
    acc.step = saved["accelerator_step"]
    return _load(folder / f"rng-{acc.process_index}.pt")


def drop_older_states(checkpoint: Path) -> None:
    """Keep one resumable state a run (they hold the optimizer: twice the trained weights): the
    newest complete one, ``checkpoint``; older checkpoints keep their weights."""
    checkpoint = Path(checkpoint)
    for other in checkpoint.parent.iterdir():
        if other != checkpoint and not other.name.startswith(".") and (other / STATE_DIR).is_dir():
            shutil.rmtree(other / STATE_DIR, ignore_errors=True)
