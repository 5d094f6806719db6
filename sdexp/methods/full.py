"""Full fine-tuning: every UNet weight (and optionally the text encoder) trains, with an EMA copy.

The EMA weights are what evaluation scores and what a checkpoint holds (swapped in around
validation, sampling and saving), because for full fine-tunes they are the better model. A
checkpoint is a diffusers pipeline folder that the family's pipeline class loads (in
``train.save_dtype``); the frozen components are written once per run and hard-linked into each.
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

    @property
    def gives_base_back(self) -> bool:
        """Its UNet (and text encoders) train in place: a sweep never lends this base again."""
        return False

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
            mods += list(self.base.text_encoders)
        return mods

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        return [p for module in self.trainable_modules() for p in module.parameters() if p.requires_grad]

    def configure_optimizers(self):
        t, m = self.cfg.train, self.cfg.method
        groups = [{"name": "unet", "params": list(self.base.unet.parameters()), "lr": t.lr}]
        if self.text_encoder_trains:
            for slot, encoder in zip(self.base.family.text_encoders, self.base.text_encoders, strict=True):
                groups.append(
                    {
                        "name": slot.attribute,
                        "params": list(encoder.parameters()),
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

    def training_state(self) -> dict:
        state = super().training_state()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def on_load_checkpoint(self, state: dict) -> None:
        super().on_load_checkpoint(state)
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
            self.ema.to(self.base.unet.device)

    # ----- checkpoints --------------------------------------------------------------------
    def on_save_checkpoint(self, ckpt_dir: Path, step: int) -> dict[str, Path]:
        """A pipeline folder: trained components written fresh, frozen ones linked from the run's copy."""
        run_dir = self.trainer.run_dir
        frozen = self._frozen_components(run_dir / FROZEN_DIR)
        shutil.copytree(frozen, ckpt_dir, copy_function=link_or_copy, dirs_exist_ok=True)
        self.on_validation_start()
        try:
            paths = {"unet": ckpt_dir / "unet"}
            _save_in(self.base.unet, paths["unet"], self.save_dtype)
            if self.text_encoder_trains:
                for slot, encoder in zip(
                    self.base.family.text_encoders, self.base.text_encoders, strict=True
                ):
                    paths[slot.attribute] = ckpt_dir / slot.attribute
                    _save_in(encoder, paths[slot.attribute], self.save_dtype)
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
        # The VAE as it was loaded: SDXL's stays fp32 under fp16 unless the user replaced it.
        self.base.vae.save_pretrained(staging / "vae", safe_serialization=True)
        family = self.base.family
        for slot, tokenizer in zip(family.text_encoders, self.base.tokenizers, strict=True):
            tokenizer.save_pretrained(staging / slot.tokenizer_attribute)
        self.base.noise_scheduler.save_pretrained(staging / "scheduler")
        if not self.text_encoder_trains:
            for slot, encoder in zip(family.text_encoders, self.base.text_encoders, strict=True):
                _save_in(encoder, staging / slot.attribute, self.save_dtype)
        os.replace(staging, folder)
        return folder

    @property
    def save_dtype(self) -> torch.dtype:
        from sdexp.models.loading import DTYPES

        return DTYPES[self.cfg.train.save_dtype]


def _save_in(module: torch.nn.Module, folder: Path, dtype: torch.dtype) -> None:
    """``save_pretrained`` in ``dtype`` (fp16/bf16 halve a checkpoint), leaving the module as it was."""
    if all(p.dtype == dtype for p in module.parameters()):
        module.save_pretrained(folder, safe_serialization=True)
        return
    state = {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in module.state_dict().items()}
    if hasattr(module, "save_config"):  # a diffusers model: its save_pretrained takes no state dict
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        module.save_config(folder)
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            folder / "diffusion_pytorch_model.safetensors",
            metadata={"format": "pt"},
        )
    else:
        module.save_pretrained(folder, safe_serialization=True, state_dict=state)
