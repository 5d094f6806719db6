"""The denoising objective: noise, timesteps, the prediction target and the loss weighting.

Pure functions over tensors, so every method (LoRA, DreamBooth, full fine-tune, from scratch)
shares one definition and the step stays small enough to compile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr


@dataclass(frozen=True)
class BatchShard:
    """Where one process's rows sit in the global batch of a step trained by several processes.

    Each process draws the noise and timesteps of the WHOLE global batch from the same seeded
    generator and keeps its rows, so N processes × batch b draw exactly what one process × batch
    N·b draws, and the generators stay in step. A local batch made of ``parts`` (DreamBooth:
    instance images, then as many class images) is laid out globally part by part, each part as
    every process's rows in rank order (how one process would concatenate the whole batch).
    With one process ``take`` returns its input: the single-process numerics are untouched."""

    parts: tuple[int, ...]
    index: int = 0
    processes: int = 1

    @property
    def global_size(self) -> int:
        return sum(self.parts) * self.processes

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """This process's rows of a tensor drawn for the global batch."""
        if self.processes == 1:
            return full
        rows, offset = [], 0
        for size in self.parts:
            start = offset + self.index * size
            rows.extend(range(start, start + size))
            offset += size * self.processes
        return full[torch.tensor(rows, device=full.device)]


def _local(shard: BatchShard | None, batch: int) -> BatchShard:
    return shard if shard is not None else BatchShard((batch,))


def sample_noise(
    latents: torch.Tensor,
    generator: torch.Generator,
    noise_offset: float = 0.0,
    shard: BatchShard | None = None,
) -> torch.Tensor:
    """Gaussian noise like ``latents``; ``noise_offset`` adds a per-channel constant (darker/brighter
    images). With ``shard``, drawn for the global batch and cut to this process's rows."""
    shard = _local(shard, latents.shape[0])
    b, c = shard.global_size, latents.shape[1]
    kw = dict(generator=generator, device=latents.device, dtype=latents.dtype)
    noise = shard.take(torch.randn((b, *latents.shape[1:]), **kw))
    if noise_offset:
        offset = shard.take(torch.randn((b, c, 1, 1), **kw))
        noise = noise + noise_offset * offset
    return noise


def sample_timesteps(
    batch: int, num_train_timesteps: int, generator: torch.Generator, device, shard: BatchShard | None = None
) -> torch.Tensor:
    shard = _local(shard, batch)
    drawn = torch.randint(0, num_train_timesteps, (shard.global_size,), generator=generator, device=device)
    return shard.take(drawn.long())


def prediction_target(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity (v-prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {kind!r}")


def per_sample_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler,
    min_snr_gamma: float | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE per sample, optionally weighted by min-SNR-γ (Hang et al. 2023) and per latent pixel
    by ``weights`` (a loss mask from ``mask_weights``, broadcast over channels).

    A weighted loss is still divided by the number of pixels, not by the weights' sum (as kohya's
    masked loss is): a learned pixel's gradient is then exactly what it is without a mask, so a
    learning rate found unmasked carries over, and a nearly black mask cannot inflate the gradient
    of its few white pixels. A small mask gives a small loss value; an all-white mask changes nothing."""
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    if weights is not None:
        loss = loss * weights.to(loss.device, loss.dtype)
    loss = loss.mean(dim=list(range(1, loss.ndim)))
    if min_snr_gamma:
        snr = compute_snr(scheduler, timesteps)
        clipped = torch.minimum(snr, torch.full_like(snr, min_snr_gamma))
        if scheduler.config.prediction_type == "v_prediction":
            weights = clipped / (snr + 1)
        else:
            weights = clipped / snr
        loss = loss * weights.to(loss.device)
    return loss


def mask_weights(mask: torch.Tensor, size: tuple[int, int], unmasked_weight: float = 0.0) -> torch.Tensor:
    """Per-latent-pixel loss weights [B, 1, h, w] from pixel masks [B, 1, H, W] (uint8 0..255 or
    float 0..1, white = learn): each latent pixel takes the mean of the image pixels it covers
    (area resize, so the VAE factor, 8 or tiny_shapes' 4, needs no special case), then black
    maps to ``unmasked_weight`` and white to 1."""
    m = mask.float() / 255.0 if mask.dtype == torch.uint8 else mask.float()
    m = F.interpolate(m, size=tuple(size), mode="area")
    return unmasked_weight + (1.0 - unmasked_weight) * m
