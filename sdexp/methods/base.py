"""The Lightning-style contract between a method and the trainer.

The trainer owns the loop (devices, precision, accumulation, clipping, callbacks); a module owns
what is specific to a method: which parameters train, what a batch holds, the loss, how a
checkpoint is written. Hook names follow Lightning so they read familiar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class StepOutput:
    """What ``training_step`` returns: the loss to back-propagate and values to log."""

    loss: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)  # tensors: read at log steps


class TrainingModule:
    """Base class; subclasses implement the hooks the trainer calls."""

    trainer: Any = None

    def setup(self, trainer) -> None:
        """Load models and data; place them on ``trainer.device``. Called once before training."""
        self.trainer = trainer

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        raise NotImplementedError

    def val_batches(self) -> list[dict]:
        """Fixed batches for the validation loss (same every time); empty = no validation."""
        return []

    def val_batches_expected(self) -> bool:
        """Whether ``val_batches`` will hold data; checked before training starts."""
        return True

    def trainable_modules(self) -> list[torch.nn.Module]:
        """Modules holding trainable parameters (prepared by accelerate, put in train mode)."""
        raise NotImplementedError

    def on_modules_prepared(self, modules: list[torch.nn.Module]) -> None:
        """``trainable_modules()`` as accelerate wrapped them (DDP etc.): call these in steps."""

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, Any]:
        """The optimizer and the per-step learning-rate scheduler."""
        raise NotImplementedError

    def on_train_epoch_start(self, epoch: int) -> None:
        pass

    def training_step(self, batch: dict, step: int) -> StepOutput:
        raise NotImplementedError

    def on_train_batch_end(self, step: int) -> None:
        """After each optimizer step (``step`` is the new count): EMA updates and the like."""

    def on_validation_start(self) -> None:
        """Before a validation pass (e.g. swap in EMA weights)."""

    def on_validation_end(self) -> None:
        """After a validation pass (undo what ``on_validation_start`` did)."""

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Per-batch values; the trainer averages each key (weighted by ``n``, over the batches that
        return it) into ``val/<key>``."""
        return {}

    def validation_summary(self, metrics: dict[str, float]) -> dict[str, float]:
        """The averaged ``val/*`` values; add values derived from several (e.g. a gap)."""
        return metrics

    def on_save_checkpoint(self, ckpt_dir: Path, step: int) -> dict[str, Path]:
        """Write the checkpoint files into ``ckpt_dir`` (a staging folder the trainer renames)."""
        raise NotImplementedError

    def training_state(self) -> dict:
        """What a resumed run needs beyond the trained parameters, optimizer and global RNGs (which
        the trainer saves): the module's own generators, EMA weights, counters. Plain containers
        and tensors only (loaded with ``weights_only=True``)."""
        return {}

    def on_load_checkpoint(self, state: dict) -> None:
        """Put back what ``training_state`` returned (after ``setup`` and ``configure_optimizers``)."""

    def inference_pipeline(self, sampler: str):
        """A context manager giving a sampling pipeline on the weights a checkpoint would save
        (EMA swapped in), in eval mode; evaluation generates through it."""
        raise NotImplementedError(f"{type(self).__name__} cannot generate images")

    def run_info(self) -> dict:
        """Method-specific facts for run.json (e.g. cache use); {} by default."""
        return {}

    def sample_images(self, prompts: list[str], seed: int) -> list:
        """Images for ``prompts`` from fixed seeds, without disturbing the training RNG."""
        return []
