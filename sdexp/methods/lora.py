"""LoRA, DoRA, LoHa or LoKr (peft) on the UNet and optionally every text encoder of the family (each
with its own rank and learning rate), saved as kohya + diffusers files (LoHa/LoKr: LyCORIS + peft)."""

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
    def te_ranks(self) -> tuple[int, ...]:
        """Rank of each text encoder's LoRA: text_encoder_rank (else rank); the second encoder
        (SDXL's bigG) text_encoder_2_rank, else the first's."""
        m = self.cfg.method
        first = int(m.text_encoder_rank or m.rank)
        return (first, int(m.text_encoder_2_rank or first))[: len(self.base.text_encoders)]

    @property
    def te_alphas(self) -> tuple[float, ...]:
        m = self.cfg.method
        return tuple(float(m.alpha if m.alpha is not None else r) for r in self.te_ranks)

    def te_lrs(self) -> tuple[float, ...]:
        m, t = self.cfg.method, self.cfg.train
        first = float(m.text_encoder_lr or t.lr)
        return (first, float(m.text_encoder_2_lr or first))[: len(self.base.text_encoders)]

    def configure_adapters(self) -> None:
        m, base = self.cfg.method, self.base
        # The adapters' initial values come from the run's seed, not from whatever ran before.
        torch.manual_seed(self.cfg.train.seed)
        base.unet.add_adapter(
            self.adapter_config(m.rank, self.alpha, unet_lora_targets(base.unet, m.targets))
        )
        modules = [base.unet]
        self.te_configs = []
        if self.text_encoder_trains:
            # transformers' own add_adapter wants peft >= 0.22; peft's injection works on any model.
            for encoder, rank, alpha in zip(base.text_encoders, self.te_ranks, self.te_alphas, strict=True):
                config = self.adapter_config(rank, alpha, text_encoder_lora_targets(encoder))
                inject_adapter_in_model(config, encoder, adapter_name="default")
                self.te_configs.append(config)
                modules.append(encoder)
        cast_training_params(modules, dtype=torch.float32)

    def adapter_config(self, rank: int, alpha: float, targets: list[str]):
        """peft config of ``method.adapter_type``: LoRA (or DoRA), or LyCORIS LoHa / LoKr."""
        m = self.cfg.method
        if m.adapter_type == "lora":
            return LoraConfig(
                r=rank, lora_alpha=alpha, lora_dropout=m.dropout, target_modules=targets, use_dora=m.dora
            )
        from sdexp.export.lycoris import adapter_config

        return adapter_config(
            m.adapter_type,
            rank=rank,
            alpha=alpha,
            targets=targets,
            factor=m.lokr_factor,
            decompose_both=m.lokr_decompose_both,
        )

    def trainable_modules(self) -> list[torch.nn.Module]:
        mods = [self.base.unet]
        if self.text_encoder_trains:
            mods += list(self.base.text_encoders)
        return mods

    def parameter_groups(self) -> list[dict]:
        t = self.cfg.train
        groups = [
            {
                "name": "unet",
                "params": [p for p in self.base.unet.parameters() if p.requires_grad],
                "lr": t.lr,
            }
        ]
        if self.text_encoder_trains:
            for slot, encoder, lr in zip(
                self.base.family.text_encoders, self.base.text_encoders, self.te_lrs(), strict=True
            ):
                params = [p for p in encoder.parameters() if p.requires_grad]
                groups.append({"name": slot.attribute, "params": params, "lr": lr})
        return groups

    def configure_optimizers(self):
        return build_optimizer_and_scheduler(self.parameter_groups(), self.cfg.train)

    def on_save_checkpoint(self, ckpt_dir: Path, step: int) -> dict[str, Path]:
        from sdexp.export.lora_files import save_lora

        cfg, trains = self.cfg, self.text_encoder_trains
        if cfg.method.adapter_type != "lora":
            return self._save_lycoris(ckpt_dir, step)
        return save_lora(
            ckpt_dir,
            unet=self.base.unet,
            text_encoders=self.base.text_encoders if trains else (),
            family=self.base.family,
            prediction_type=self.base.prediction_type,
            rank=cfg.method.rank,
            alpha=self.alpha,
            text_encoder_ranks=self.te_ranks if trains else (),
            text_encoder_alphas=self.te_alphas if trains else (),
            resolution=self.resolution,
            steps=step,
            title=cfg.logger.run_name or f"sdexp-{self.base.name}-lora",
            targets=cfg.method.targets,
            base_model=self.base.name,
        )

    def _save_lycoris(self, ckpt_dir: Path, step: int) -> dict[str, Path]:
        """LoHa/LoKr: a LyCORIS file (A1111/ComfyUI) and peft's state with its configs (sdexp)."""
        from sdexp.export.lycoris import save_lycoris

        cfg, trains = self.cfg, self.text_encoder_trains
        m = cfg.method
        args = {"factor": str(m.lokr_factor), "decompose_both": str(m.lokr_decompose_both)}
        return save_lycoris(
            ckpt_dir,
            unet=self.base.unet,
            unet_config=self.base.unet.peft_config["default"],
            text_encoders=tuple(zip(self.base.text_encoders, self.te_configs)) if trains else (),
            family=self.base.family,
            prediction_type=self.base.prediction_type,
            rank=m.rank,
            alpha=self.alpha,
            text_encoder_ranks=self.te_ranks if trains else (),
            text_encoder_alphas=self.te_alphas if trains else (),
            resolution=self.resolution,
            steps=step,
            title=cfg.logger.run_name or f"sdexp-{self.base.name}-{m.adapter_type}",
            targets=m.targets,
            base_model=self.base.name,
            network_args=args if m.adapter_type == "lokr" else None,
        )
