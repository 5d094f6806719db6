"""Stage 3: a UNet2DConditionModel trained from scratch on the frozen text tower and VAE.

This is the fine-tuning module (StableDiffusionModule) with the whole UNet trainable: same
noise, targets, loss, validation and sampling code. What differs is only data access: latents
are encoded once into memory (mean and std of the VAE posterior, sampled each step) and captions
tokenized once, so at 64 px the GPU is never waiting on a loader. The EMA weights are saved.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdexp.methods.base import StepOutput
from sdexp.methods.diffusion import per_sample_loss, prediction_target, sample_noise, sample_timesteps
from sdexp.methods.stable_diffusion import VALIDATION_SEED_OFFSET, StableDiffusionModule
from sdexp.optim import build_optimizer_and_scheduler
from sdexp.pretrain.images import CaptionedImages, fixed_batches, index_loader
from sdexp.pretrain.tokens import CaptionTokens


class UnetFromScratchModule(StableDiffusionModule):
    def __init__(self, cfg, images: CaptionedImages, objective):
        super().__init__(cfg)
        self.images, self.objective = images, objective
        self.train_dataset = images  # load_data has nothing left to do
        self.ema = None

    def load_data(self) -> None:
        pass

    def configure_adapters(self) -> None:
        unet = self.base.unet
        unet.to(dtype=torch.float32)  # trained weights stay fp32 under mixed precision
        unet.requires_grad_(True)

    def setup(self, trainer) -> None:
        super().setup(trainer)
        device = trainer.device
        self.tokens = CaptionTokens(self.base.tokenizers[0], self.images.captions).to(device)
        self._encode_latents(device)
        if self.objective.ema_decay:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.base.unet.parameters(), decay=self.objective.ema_decay, foreach=True)
            self.ema.to(device)

    @torch.no_grad()
    def _encode_latents(self, device) -> None:
        """Posterior mean and std of every image, once (frees the pixels afterwards)."""
        self.images.to(device)
        vae = self.base.vae
        means, stds = [], []
        for chunk in fixed_batches(torch.arange(len(self.images)), 512):
            pixels, _ = self.images.batch(chunk)
            dist = vae.encode(pixels.to(self._vae_dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        self.latent_mean, self.latent_std = torch.cat(means), torch.cat(stds)
        self.scaling = vae.config.scaling_factor

    def trainable_modules(self):
        return [self.base.unet]

    def configure_optimizers(self):
        params = [{"params": list(self.base.unet.parameters()), "name": "unet"}]
        return build_optimizer_and_scheduler(params, self.cfg.train)

    def train_dataloader(self):
        return index_loader(self.images.train, self.cfg.train.batch_size, self.cfg.train.seed)

    def on_train_epoch_start(self, epoch: int) -> None:
        pass

    def training_step(self, batch, step: int) -> StepOutput:
        t, sched, gen = self.cfg.train, self.base.noise_scheduler, self._generator
        index = batch.to(self.latent_mean.device)
        mean, std = self.latent_mean[index], self.latent_std[index]
        eps = torch.randn(mean.shape, generator=gen, device=mean.device)
        latents = (mean + std * eps) * self.scaling
        noise = sample_noise(latents, gen, t.noise_offset)
        timesteps = sample_timesteps(latents.shape[0], sched.config.num_train_timesteps, gen, latents.device)
        noisy = sched.add_noise(latents, noise, timesteps)
        groups = self.tokens.group[index]
        if self.objective.cond_dropout:
            drop = torch.rand(groups.shape, generator=gen, device=groups.device) < self.objective.cond_dropout
            groups = torch.where(drop, torch.full_like(groups, self.tokens.empty_group), groups)
        with torch.no_grad():
            text = self.base.family.encode(self._text_encoder_calls, (self.tokens.ids_of_groups(groups),))
        pred = self._predict(noisy, timesteps, text)
        target = prediction_target(sched, latents, noise, timesteps)
        loss = per_sample_loss(pred, target, timesteps, sched, t.min_snr_gamma).mean()
        return StepOutput(loss=loss)

    def on_train_batch_end(self, step: int) -> None:
        if self.ema is not None:
            self.ema.step(self.base.unet.parameters())

    # ----- validation with the weights that will be saved ---------------------------------
    def on_validation_start(self) -> None:
        if self.ema is not None:
            self.ema.store(self.base.unet.parameters())
            self.ema.copy_to(self.base.unet.parameters())

    def on_validation_end(self) -> None:
        if self.ema is not None:
            self.ema.restore(self.base.unet.parameters())

    def val_batches_expected(self) -> bool:
        return len(self.images.val) > 0

    def val_batches(self) -> list[dict]:
        """Fixed latents (posterior means), noise and a timestep grid, 32 images to a batch."""
        if self._val_cache is not None:
            return self._val_cache
        sched = self.base.noise_scheduler
        n_t = self.cfg.train.val_timesteps
        grid = torch.linspace(0, sched.config.num_train_timesteps - 1, n_t).round().long()
        generator = torch.Generator(device="cpu").manual_seed(self.cfg.train.seed + VALIDATION_SEED_OFFSET)
        batches = []
        for chunk in fixed_batches(self.images.val, 32):
            latents = (self.latent_mean[chunk.to(self.latent_mean.device)] * self.scaling).cpu()
            latents = latents.repeat_interleave(n_t, dim=0)
            batches.append(
                {
                    "latents": latents,
                    "noise": torch.randn(latents.shape, generator=generator),
                    "timesteps": grid.repeat(len(chunk)),
                    "caption": [self.images.captions[i] for i in chunk.tolist() for _ in range(n_t)],
                }
            )
        self._val_cache = batches
        return batches

    def on_save_checkpoint(self, ckpt_dir: Path, step: int) -> dict:
        self.on_validation_start()
        try:
            self.base.unet.save_pretrained(ckpt_dir / "unet", safe_serialization=True)
        finally:
            self.on_validation_end()
        return {"unet": ckpt_dir / "unet"}
