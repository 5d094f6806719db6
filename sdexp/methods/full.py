"""Full fine-tuning: every UNet weight (and optionally the text encoder) trains, with an EMA copy.

The EMA weights are what evaluation scores and what a checkpoint holds (swapped in around
validation, sampling and saving), because for full fine-tunes they are the better model. A
checkpoint is a diffusers pipeline folder that ``StableDiffusionPipeline.from_pretrained`` loads;
the frozen components are written once per run and hard-linked into each checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from sdexp.atomic import link_or_copy
from sdexp.methods.stable_diffusion import StableDiffusionModule
from sdexp.optim import build_optimizer_and_scheduler

FROZEN_DIR = ".frozen-components"  # in the run folder; checkpoints hard-link its files


class FullModule(StableDiffusionModule):
    """``method=finetune``, or ``method=dreambooth method.adapter=full``."""

    ema = None

    @property
    def text_encoder_trains(self) -> bool:
        return bool(getattr(self.cfg.method, "train_text_encoder", False))

    def configure_adapters(self) -> None:
        from diffusers.training_utils import EMAModel

        # Trained weights are kept in fp32 (mixed precision autocasts the compute), as diffusers does.
        modules = self.trainable_modules()
        for module in modules:
            module.to(torch.float32)
            module.requires_grad_(True)
        self._unet_dtype = torch.float32
        m = self.cfg.method
        if m.ema_decay:
            self.ema = EMAModel(
                self._trained_parameters(),
                decay=m.ema_decay,
                use_ema_warmup=bool(getattr(m, "ema_warmup", False)),
            )

    def trainable_modules(self) -> list[torch.nn.Module]:
        mods = [self.base.unet]
        if self.text_encoder_trains:
            mods.append(self.base.text_encoder)
        return mods

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        return [p for module in self.trainable_modules() for p in module.parameters() if p.requires_grad]

    def configure_optimizers(self):
        t, m = self.cfg.train, self.cfg.method
        groups = [{"name": "unet", "params": list(self.base.unet.parameters()), "lr": t.lr}]
        if self.text_encoder_trains:
            groups.append(
                {
                    "name": "text_encoder",
                    "params": list(self.base.text_encoder.parameters()),
                    "lr": m.text_encoder_lr or t.lr,
                }
            )
        return build_optimizer_and_scheduler(groups, t)

    # ----- EMA ----------------------------------------------------------------------------
    def on_train_batch_end(self, step: int) -> None:
        if self.ema is not None:
            if self.ema.shadow_params[0].device != self.base.unet.device:
                self.ema.to(self.base.unet.device)
            self.ema.step(self._trained_parameters())

    def on_validation_start(self) -> None:
        """Evaluation, samples and checkpoints see the EMA weights; training resumes on the raw ones."""
        if self.ema is not None:
            params = self._trained_parameters()
            self.ema.store(params)
            self.ema.copy_to(params)

    def on_validation_end(self) -> None:
        if self.ema is not None:
            self.ema.restore(self._trained_parameters())

    # ----- checkpoints --------------------------------------------------------------------
    def on_save_checkpoint(self, ckpt_dir: Path, step: int) -> dict[str, Path]:
        """A pipeline folder: trained components written fresh, frozen ones linked from the run's copy."""
        run_dir = self.trainer.run_dir
        frozen = self._frozen_components(run_dir / FROZEN_DIR)
        shutil.copytree(frozen, ckpt_dir, copy_function=link_or_copy, dirs_exist_ok=True)
        self.on_validation_start()
        try:
            paths = {"unet": ckpt_dir / "unet"}
            self.base.unet.save_pretrained(paths["unet"], safe_serialization=True)
            if self.text_encoder_trains:
                paths["text_encoder"] = ckpt_dir / "text_encoder"
                self.base.text_encoder.save_pretrained(paths["text_encoder"], safe_serialization=True)
        finally:
            self.on_validation_end()
        (ckpt_dir / "sdexp_checkpoint.txt").write_text(
            f"method={self.cfg.method.name} step={step} ema={'yes' if self.ema is not None else 'no'} "
            f"base={self.base.name}\n"
        )
        return paths

    def _frozen_components(self, folder: Path) -> Path:
        """The components this run does not train, plus model_index.json, saved once per run."""
        if folder.is_dir():
            return folder
        staging = folder.parent / f"{folder.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        pipe = self.base.pipeline()
        pipe.save_config(staging)  # model_index.json: which class each component folder holds
        self.base.vae.save_pretrained(staging / "vae", safe_serialization=True)
        self.base.tokenizer.save_pretrained(staging / "tokenizer")
        self.base.noise_scheduler.save_pretrained(staging / "scheduler")
        if not self.text_encoder_trains:
            self.base.text_encoder.save_pretrained(staging / "text_encoder", safe_serialization=True)
        os.replace(staging, folder)
        return folder
