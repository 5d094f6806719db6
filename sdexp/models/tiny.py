"""The built-in random-weight bases, one per family: `tiny` (SD 1.x), `tiny_sd2`, `tiny_sdxl`.

Small configs of each real architecture with seeded random weights, built once and cached, so
every test, the demo and CI run real diffusers components of every family without downloading
weights. Same versions of torch/diffusers/transformers → byte-identical files on every build.

- `tiny`: SD 1.x (conv 1×1 proj_in/out, CLIP-L-style text encoder with quick_gelu, epsilon).
- `tiny_sd2`: SD 2.x (linear proj_in/out, an OpenCLIP-style text encoder with gelu whose
  tokenizer pads with ``!``, v-prediction like SD 2.1 768).
- `tiny_sdxl`: SDXL (two text encoders, the second with a projection and ``!`` padding,
  penultimate hidden states concatenated, text_time micro-conditioning, VAE scaling 0.13025,
  layers_per_block 2 as in the real UNet so the original SGM block numbering is exercised).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TINY_VERSION = 2
TINY_RESOLUTION = 64

UNET_CONFIG = dict(
    sample_size=TINY_RESOLUTION // 4,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 32),
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=TINY_RESOLUTION,
)
TEXT_CONFIG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=32,
    hidden_act="quick_gelu",
)
# Stable Diffusion 1.x's noise schedule.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    steps_offset=1,
)

# SD 2.x: linear projections, per-block head counts, an OpenCLIP-style (gelu) text encoder.
SD2_UNET_CONFIG = {
    **UNET_CONFIG,
    "use_linear_projection": True,
    "attention_head_dim": (2, 4, 4),
}
SD2_TEXT_CONFIG = {**TEXT_CONFIG, "hidden_act": "gelu"}
SD2_SCHEDULER_CONFIG = {**SCHEDULER_CONFIG, "prediction_type": "v_prediction"}

# SDXL: no attention in the first block, two text encoders (32 + 32 = 64 context), pooled
# embedding of the second (projection 32) plus six time ids of 8 channels each.
SDXL_ADD_TIME_DIM = 8
SDXL_UNET_CONFIG = dict(
    sample_size=TINY_RESOLUTION // 4,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 64),
    layers_per_block=2,
    transformer_layers_per_block=(1, 1, 2),
    cross_attention_dim=64,
    attention_head_dim=(2, 4, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=SDXL_ADD_TIME_DIM,
    projection_class_embeddings_input_dim=32 + 6 * SDXL_ADD_TIME_DIM,
    norm_num_groups=8,
)
SDXL_VAE_CONFIG = {**VAE_CONFIG, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_TEXT_CONFIG = TEXT_CONFIG
SDXL_TEXT_2_CONFIG = {**TEXT_CONFIG, "hidden_act": "gelu", "num_hidden_layers": 3}
SDXL_SCHEDULER_CONFIG = SCHEDULER_CONFIG


def cache_root() -> Path:
    return Path(os.environ.get("SDEXP_CACHE", Path.home() / ".cache" / "sdexp"))


def _build_key(name: str, version: int) -> str:
    import diffusers
    import torch
    import transformers

    text = f"{name}|{version}|{torch.__version__}|{diffusers.__version__}|{transformers.__version__}"
    if name == "tiny":  # the SD 1.x key predates the others; keep its cache folder name
        text = f"{version}|{torch.__version__}|{diffusers.__version__}|{transformers.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _text_encoder(cls, tokenizer, config: dict, seed: int):
    import torch
    from transformers import CLIPTextConfig

    torch.manual_seed(seed)
    return cls(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **config,
        )
    )


def _tokenizer(tmp: Path, name: str, pad_token: str | None = None):
    from transformers import CLIPTokenizer

    from sdexp.models.tokenizer import train_clip_tokenizer

    kwargs = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer.from_pretrained(train_clip_tokenizer(tmp / name, **kwargs))


def _save(pipe, out_dir: Path, tokenizers: dict[str, str | None]) -> Path:
    """Save the pipeline; ship each tokenizer in CLIP's own layout (as the real models do), not
    transformers' re-save of it, which records load-time flags and so differs between builds."""
    from sdexp.models.tokenizer import train_clip_tokenizer

    pipe.save_pretrained(out_dir, safe_serialization=True)
    for folder, pad_token in tokenizers.items():
        shutil.rmtree(out_dir / folder)
        train_clip_tokenizer(out_dir / folder, **({"pad_token": pad_token} if pad_token else {}))
    return out_dir


def _build_one_encoder(out_dir: Path, unet_config, text_config, scheduler_config, seed: int, pad_token):
    """An SD 1.x/2.x-layout pipeline folder (one text encoder), seeded from ``seed``."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from sdexp.quiet import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp), "tokenizer", pad_token=pad_token)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    text_encoder = _text_encoder(CLIPTextModel, tokenizer, text_config, seed=seed + 2)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDPMScheduler(**scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _save(pipe, Path(out_dir), {"tokenizer": pad_token})


def build_tiny(out_dir: str | Path) -> Path:
    """Write the tiny SD 1.x model as a diffusers folder at ``out_dir`` (deterministic)."""
    return _build_one_encoder(Path(out_dir), UNET_CONFIG, TEXT_CONFIG, SCHEDULER_CONFIG, 0, None)


def build_tiny_sd2(out_dir: str | Path) -> Path:
    """The tiny SD 2.x model (v-prediction, ``!``-padded OpenCLIP-style tokenizer)."""
    return _build_one_encoder(Path(out_dir), SD2_UNET_CONFIG, SD2_TEXT_CONFIG, SD2_SCHEDULER_CONFIG, 10, "!")


def build_tiny_sdxl(out_dir: str | Path) -> Path:
    """The tiny SDXL model: two text encoders, text_time conditioning, 0.13025 VAE scaling."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from sdexp.quiet import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp), "tokenizer")
        tokenizer_2 = _tokenizer(Path(tmp), "tokenizer_2", pad_token="!")
    torch.manual_seed(20)
    unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
    torch.manual_seed(21)
    vae = AutoencoderKL(**SDXL_VAE_CONFIG)
    text_encoder = _text_encoder(CLIPTextModel, tokenizer, SDXL_TEXT_CONFIG, seed=22)
    text_encoder_2 = _text_encoder(CLIPTextModelWithProjection, tokenizer_2, SDXL_TEXT_2_CONFIG, seed=23)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=DDPMScheduler(**SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    return _save(pipe, Path(out_dir), {"tokenizer": None, "tokenizer_2": "!"})


@dataclass(frozen=True)
class TinyModel:
    name: str
    version: int
    build: Callable[[str | Path], Path]


TINY_MODELS = {
    m.name: m
    for m in (
        TinyModel("tiny", TINY_VERSION, build_tiny),
        TinyModel("tiny_sd2", 1, build_tiny_sd2),
        TinyModel("tiny_sdxl", 1, build_tiny_sdxl),
    )
}


def ensure_tiny(name: str = "tiny") -> Path:
    """The cached folder of built-in random-weight model ``name``, built atomically on first use."""
    from sdexp.atomic import build_folder_once

    spec = TINY_MODELS[name]
    target = cache_root() / "models" / f"{name}-v{spec.version}-{_build_key(name, spec.version)}"
    return build_folder_once(target, spec.build, "model_index.json")
