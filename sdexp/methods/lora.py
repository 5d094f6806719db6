"""LoRA or DoRA (peft) on the UNet and optionally the text encoder (its own rank and learning rate),
saved as kohya + diffusers files."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.training_utils import cast_training_params
from peft import LoraConfig, inject_adapter_in_model

from sdexp.methods.stable_diffusion import StableDiffusionModule
from sdexp.models.lora_targets import text_encoder_lora_targets, unet_lora_targets
from sdexp.optim import build_optimizer_and_scheduler


class LoraModule(StableDiffusionModule):
    """Low-rank adapters; the base weights stay frozen."""

    @property
    def text_encoder_trains(self) -> bool:
        return bool(self.cfg.method.train_text_encoder)

    @property
    def alpha(self) -> float:
        m = self.cfg.method
        return float(m.alpha if m.alpha is not None else m.rank)

    @property
    def te_rank(self) -> int:
        m = self.cfg.method
        return int(m.text_encoder_rank or m.rank)

    @property
    def te_alpha(self) -> float:
        m = self.cfg.method
        return float(m.alpha if m.alpha is not None else self.te_rank)

    def configure_adapters(self) -> None:
        m, base = self.cfg.method, self.base
        # The adapters' initial values come from the run's seed, not from whatever ran before.
        torch.manual_seed(self.cfg.train.seed)
        base.unet.add_adapter(
            LoraConfig(
                r=m.rank,
                lora_alpha=self.alpha,
                lora_dropout=m.dropout,
                target_modules=unet_lora_targets(base.unet, m.targets),
                use_dora=m.dora,
            )
        )
        modules = [base.unet]
        if self.text_encoder_trains:
            # transformers' own add_adapter wants peft >= 0.22; peft's injection works on any model.
            inject_adapter_in_model(
                LoraConfig(
                    r=self.te_rank,
                    lora_alpha=self.te_alpha,
                    lora_dropout=m.dropout,
                    target_modules=text_encoder_lora_targets(base.text_encoder),
                    use_dora=m.dora,
                ),
                base.text_encoder,
                adapter_name="default",
            )
            modules.append(base.text_encoder)
        cast_training_params(modules, dtype=torch.float32)

    def trainable_modules(self) -> list[torch.nn.Module]:
        mods = [self.base.unet]
        if self.text_encoder_trains:
            mods.append(self.base.text_encoder)
        return mods

    def parameter_groups(self) -> list[dict]:
        t, m = self.cfg.train, self.cfg.method
        groups = [
            {
                "name": "unet",
                "params": [p for p in self.base.unet.parameters() if p.requires_grad],
                "lr": t.lr,
            }
        ]
        if self.text_encoder_trains:
            te_params = [p for p in self.base.text_encoder.parameters() if p.requires_grad]
            groups.append({"name": "text_encoder", "params": te_params, "lr": m.text_encoder_lr or t.lr})
        return groups

    def configure_optimizers(self):
        return build_optimizer_and_scheduler(self.parameter_groups(), self.cfg.train)

    def on_save_checkpoint(self, ckpt_dir: Path, step: int) -> dict[str, Path]:
        from sdexp.export.lora_files import save_lora

        cfg = self.cfg
        return save_lora(
            ckpt_dir,
            unet=self.base.unet,
            text_encoder=self.base.text_encoder if self.text_encoder_trains else None,
            family=self.base.family,
            rank=cfg.method.rank,
            alpha=self.alpha,
            te_rank=self.te_rank if self.text_encoder_trains else None,
            te_alpha=self.te_alpha if self.text_encoder_trains else None,
            resolution=self.resolution,
            steps=step,
            title=cfg.logger.run_name or f"sdexp-{self.base.name}-lora",
            targets=cfg.method.targets,
            base_model=self.base.name,
        )
