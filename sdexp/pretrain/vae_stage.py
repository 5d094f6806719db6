"""Stage 2: an AutoencoderKL trained on the images (reconstruction + a small KL term).

At save time the latent scaling factor is measured (1 / std of the latents), as SD's 0.18215
was, so the diffusion stage sees unit-variance latents.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from sdexp.methods.base import StepOutput, TrainingModule
from sdexp.optim import build_optimizer_and_scheduler
from sdexp.pretrain.images import CaptionedImages, fixed_batches, index_loader


def vae_config(arch) -> dict:
    v = arch.vae
    n = len(v.block_out_channels)
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(v.block_out_channels),
        latent_channels=v.latent_channels,
        layers_per_block=v.layers_per_block,
        norm_num_groups=v.norm_num_groups,
        sample_size=arch.resolution,
    )


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    return 10.0 * torch.log10(4.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def measure_scaling_factor(vae, images: CaptionedImages, indices: torch.Tensor, batch: int = 256) -> float:
    means = [
        vae.encode(images.batch(chunk)[0]).latent_dist.mode().float()
        for chunk in fixed_batches(indices, batch)
    ]
    std = torch.cat(means).std().item()
    return 1.0 / std if std > 0 and math.isfinite(std) else 1.0


class VaePretrainModule(TrainingModule):
    def __init__(self, images: CaptionedImages, arch, objective, train_cfg):
        self.images, self.arch, self.objective, self.t = images, arch, objective, train_cfg
        self.vae = None

    def setup(self, trainer) -> None:
        from diffusers import AutoencoderKL

        super().setup(trainer)
        torch.manual_seed(self.t.seed + 1)
        self.vae = AutoencoderKL(**vae_config(self.arch)).to(trainer.device)
        self.images.to(trainer.device)
        self._vae = self.vae
        self._generator = torch.Generator(device=trainer.device).manual_seed(self.t.seed)

    def trainable_modules(self):
        return [self.vae]

    def on_modules_prepared(self, modules) -> None:
        self._vae = modules[0]

    def configure_optimizers(self):
        return build_optimizer_and_scheduler([{"params": list(self.vae.parameters()), "name": "vae"}], self.t)

    def train_dataloader(self):
        return index_loader(self.images.train, self.t.batch_size, self.t.seed)

    def _losses(self, index: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, _ = self.images.batch(index)
        vae = self._vae
        posterior = vae.encode(pixels).latent_dist
        z = posterior.sample(generator=generator) if generator is not None else posterior.mode()
        recon = vae.decode(z).sample.float()
        mse = F.mse_loss(recon, pixels)
        return mse, posterior.kl().float().mean()

    def training_step(self, batch, step: int) -> StepOutput:
        mse, kl = self._losses(batch, self._generator)
        loss = mse + self.objective.kl_weight * kl
        return StepOutput(loss=loss, logs={"train/mse": mse.detach(), "train/kl": kl.detach()})

    def val_batches(self) -> list:
        return fixed_batches(self.images.val, 128)

    def val_batches_expected(self) -> bool:
        return len(self.images.val) > 0

    @torch.no_grad()
    def validation_step(self, batch, batch_idx: int) -> dict:
        mse, kl = self._losses(batch, None)
        return {"loss": mse, "psnr": psnr(mse), "kl": kl, "n": torch.tensor(float(len(batch)))}

    def on_save_checkpoint(self, ckpt_dir: Path, step: int) -> dict:
        self.vae.eval()
        sample = self.images.train[:1024]
        self.vae.register_to_config(scaling_factor=measure_scaling_factor(self.vae, self.images, sample))
        self.vae.train()
        self.vae.save_pretrained(ckpt_dir / "vae", safe_serialization=True)
        return {"vae": ckpt_dir / "vae"}
