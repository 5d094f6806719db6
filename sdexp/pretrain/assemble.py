"""Pretrained parts → a diffusers pipeline folder (plus the CLIP beside it, without a second text tower).

Layout of a finished model folder (what `model=tiny_shapes` ships):
  model_index.json, scheduler/, tokenizer/, text_encoder/, vae/, unet/   (an SD 1.x pipeline)
  clip/config.json, clip/model.safetensors (vision tower + projections), clip/preprocessor_config.json
The CLIP's text tower *is* text_encoder/, so `sdexp.metrics.clip_models` joins the two on load.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

# Stable Diffusion 1.x's noise schedule (the tiny base and SD 1.5 use the same).
SD1_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    steps_offset=1,
)


def unet_config(arch) -> dict:
    u = arch.unet
    n = len(u.block_out_channels)
    return dict(
        sample_size=arch.resolution // 2 ** (len(arch.vae.block_out_channels) - 1),
        in_channels=arch.vae.latent_channels,
        out_channels=arch.vae.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        block_out_channels=tuple(u.block_out_channels),
        layers_per_block=u.layers_per_block,
        cross_attention_dim=arch.clip.text_hidden,
        attention_head_dim=u.attention_head_dim,
        norm_num_groups=u.norm_num_groups,
    )


def save_pipeline_folder(out_dir: Path, *, unet, vae, text_encoder, tokenizer_dir: Path, scheduler) -> Path:
    """Write an SD 1.x pipeline folder; the tokenizer is copied in CLIP's own file layout."""
    from transformers import CLIPTokenizer

    from sdexp.models.families import get_family

    pipe = get_family("sd1").assemble_pipeline(
        unet=unet,
        vae=vae,
        text_encoders=(text_encoder,),
        tokenizers=(CLIPTokenizer.from_pretrained(tokenizer_dir),),
        scheduler=scheduler,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # transformers' re-save records load-time flags; ship the learned files as they are.
    shutil.rmtree(out_dir / "tokenizer")
    shutil.copytree(tokenizer_dir, out_dir / "tokenizer")
    return out_dir


def text_encoder_from_clip(clip_model):
    """The CLIP's text tower as an SD 1.x text encoder (same `text_model.*` weights)."""
    from sdexp.models.families import get_family

    text_encoder = get_family("sd1").text_encoder_class()(clip_model.config.text_config)
    text_tower(text_encoder).load_state_dict(clip_model.text_model.state_dict())
    return text_encoder


def text_tower(text_encoder):
    """The transformer inside a text encoder (transformers < 5.2x wraps it in `.text_model`)."""
    return getattr(text_encoder, "text_model", text_encoder)


def save_clip_beside(out_dir: Path, clip_model, dtype: torch.dtype = torch.float32) -> Path:
    """`clip/`: config, the non-text weights, and how images are prepared for it."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    from sdexp.pretrain.clip_stage import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD

    clip_dir = out_dir / "clip"
    clip_dir.mkdir(parents=True, exist_ok=True)
    clip_model.config.save_pretrained(clip_dir)
    weights = {
        k: v.detach().to(dtype).contiguous()
        for k, v in clip_model.state_dict().items()
        if not k.startswith("text_model.")
    }
    save_file(
        weights, clip_dir / "model.safetensors", metadata={"format": "pt", "text_tower": "../text_encoder"}
    )
    size = clip_model.config.vision_config.image_size
    CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(CLIP_IMAGE_MEAN),
        image_std=list(CLIP_IMAGE_STD),
    ).save_pretrained(clip_dir)
    return clip_dir


def noise_scheduler(prediction_type: str):
    from diffusers import DDPMScheduler

    return DDPMScheduler(prediction_type=prediction_type, **SD1_SCHEDULE)


def write_unet_base(
    out_dir: Path,
    *,
    arch,
    clip_dir: Path,
    vae_dir: Path,
    tokenizer_dir: Path,
    prediction_type: str,
    seed: int,
) -> Path:
    """The folder the UNet stage trains on: trained text tower and VAE, a freshly initialised UNet."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPModel

    clip_model = CLIPModel.from_pretrained(clip_dir)
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(**unet_config(arch))
    return save_pipeline_folder(
        out_dir,
        unet=unet,
        vae=AutoencoderKL.from_pretrained(vae_dir),
        text_encoder=text_encoder_from_clip(clip_model),
        tokenizer_dir=tokenizer_dir,
        scheduler=noise_scheduler(prediction_type),
    )


def write_final_model(
    out_dir: Path, *, unet_base: Path, unet_dir: Path, clip_dir: Path, dtype=torch.float16
) -> Path:
    """The shipped folder: the pipeline in ``dtype`` with the trained UNet, and the CLIP beside it."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPModel

    from sdexp.models.families import get_family

    staging = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    save_pipeline_folder(
        staging,
        unet=UNet2DConditionModel.from_pretrained(unet_dir).to(dtype),
        vae=AutoencoderKL.from_pretrained(unet_base, subfolder="vae").to(dtype),
        text_encoder=get_family("sd1")
        .text_encoder_class()
        .from_pretrained(unet_base / "text_encoder")
        .to(dtype),
        tokenizer_dir=unet_base / "tokenizer",
        scheduler=DDPMScheduler.from_pretrained(unet_base, subfolder="scheduler"),
    )
    save_clip_beside(staging, CLIPModel.from_pretrained(clip_dir), dtype)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return out_dir
