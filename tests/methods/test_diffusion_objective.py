"""The denoising objective: targets, min-SNR weighting and noise offset."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from sdexp.methods.diffusion import per_sample_loss, prediction_target, sample_noise
from sdexp.models.tiny import SCHEDULER_CONFIG


def _sched(kind="epsilon"):
    return DDPMScheduler(**{**SCHEDULER_CONFIG, "prediction_type": kind})


def test_epsilon_target_is_the_noise_and_v_target_is_the_velocity():
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    assert torch.equal(prediction_target(_sched(), latents, noise, t), noise)
    v = _sched("v_prediction")
    alpha = v.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    sigma = (1 - v.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(prediction_target(v, latents, noise, t), alpha * noise - sigma * latents, atol=1e-5)


def test_min_snr_weights_are_min_snr_gamma_over_snr():
    sched = _sched()
    pred, target = torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2)
    t = torch.tensor([5, 950])
    plain = per_sample_loss(pred, target, t, sched)
    weighted = per_sample_loss(pred, target, t, sched, min_snr_gamma=5.0)
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    expected = plain * torch.minimum(snr, torch.tensor(5.0)) / snr
    assert torch.allclose(weighted, expected)
    assert weighted[0] < plain[0]  # low noise (high SNR) is down-weighted
    assert torch.isclose(weighted[1], plain[1])  # high noise: SNR < gamma, weight 1


def test_noise_offset_shifts_each_channel_by_a_constant():
    latents = torch.zeros(1, 4, 16, 16)
    plain = sample_noise(latents, torch.Generator().manual_seed(0))
    offset = sample_noise(latents, torch.Generator().manual_seed(0), noise_offset=0.5)
    diff = offset - plain
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff))
    assert diff.abs().max() > 0
