"""Running a diffusers pipeline of any family in a dtype consistent with its weights.

Mixed precision leaves a base in several dtypes at once: frozen weights in bf16/fp16, LoRA or fully
trained weights in fp32, the VAE in fp32 when its family needs it (SDXL in fp16) or the user asks.
The pipelines assume one dtype, so sampling runs the denoising loop under autocast to the frozen
weights' dtype (what training computes in) and decodes the latents itself, cast to the VAE's dtype.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

HALF = (torch.float16, torch.bfloat16)


def compute_dtype(pipe) -> torch.dtype:
    """The lowest precision among the UNet's and text encoders' weights: what sampling computes in."""
    dtypes = []
    for name in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            dtypes += {p.dtype for p in module.parameters() if p.is_floating_point()}
    half = [d for d in dtypes if d in HALF]
    return half[0] if half else torch.float32


def autocast_for(device: torch.device, dtype: torch.dtype):
    """Autocast to ``dtype`` on ``device``, or nothing when everything is fp32."""
    if dtype not in HALF:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> list:
    """PIL images from the pipeline's latents, decoded in the VAE's own dtype (float latents into a
    bf16 VAE, or half latents into an fp32 one, are what the pipelines get wrong)."""
    from diffusers.image_processor import VaeImageProcessor

    config = vae.config
    dtype = next(vae.parameters()).dtype
    latents = latents.to(vae.device, dtype)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:  # VAEs with per-channel latent statistics
        shape = (1, -1, 1, 1)
        mean = torch.tensor(mean).view(shape).to(latents)
        std = torch.tensor(std).view(shape).to(latents)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    with torch.autocast(device_type=latents.device.type, enabled=False):
        image = vae.decode(latents, return_dict=False)[0]
    scale = 2 ** (len(config.block_out_channels) - 1)
    return VaeImageProcessor(vae_scale_factor=scale).postprocess(image.float(), output_type="pil")


@torch.no_grad()
def run_pipeline(
    pipe,
    prompts: list[str],
    *,
    generators: list[torch.Generator],
    steps: int,
    guidance: float,
    width: int,
    height: int,
    negative_prompt: str = "",
) -> list:
    """One image per prompt (each from its own generator), from a pipeline of any family."""
    dtype = compute_dtype(pipe)
    with autocast_for(pipe.device, dtype):
        latents = pipe(
            list(prompts),
            negative_prompt=[negative_prompt] * len(prompts) if negative_prompt else None,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=height,
            width=width,
            generator=generators,
            output_type="latent",
        ).images
    return decode_latents(pipe.vae, latents)
