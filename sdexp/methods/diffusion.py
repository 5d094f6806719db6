"""The denoising objective: noise, timesteps, the prediction target and the loss weighting.

Pure functions over tensors, so every method (LoRA, DreamBooth, full fine-tune, from scratch)
shares one definition and the step stays small enough to compile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr


def sample_noise(
    latents: torch.Tensor, generator: torch.Generator, noise_offset: float = 0.0
) -> torch.Tensor:
    """Gaussian noise like ``latents``; ``noise_offset`` adds a per-channel constant (darker/brighter images)."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        b, c = latents.shape[:2]
        offset = torch.randn((b, c, 1, 1), generator=generator, device=latents.device, dtype=latents.dtype)
        noise = noise + noise_offset * offset
    return noise


def sample_timesteps(
    batch: int, num_train_timesteps: int, generator: torch.Generator, device
) -> torch.Tensor:
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=device).long()


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
) -> torch.Tensor:
    """MSE per sample, optionally weighted by min-SNR-γ (Hang et al. 2023)."""
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
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
