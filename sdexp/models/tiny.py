"""The built-in `tiny` base: SD 1.x architecture, seeded random weights, built once and cached.

It lets every test, the demo and CI run real diffusers components without downloading weights.
Same versions of torch/diffusers/transformers → byte-identical files on every build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
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


def cache_root() -> Path:
    return Path(os.environ.get("SDEXP_CACHE", Path.home() / ".cache" / "sdexp"))


def _build_key() -> str:
    import diffusers
    import torch
    import transformers

    text = f"{TINY_VERSION}|{torch.__version__}|{diffusers.__version__}|{transformers.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def build_tiny(out_dir: str | Path) -> Path:
    """Write the tiny model as a diffusers folder at ``out_dir`` (deterministic)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sdexp.models.tokenizer import train_clip_tokenizer
    from sdexp.quiet import quiet_libraries

    quiet_libraries()

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(train_clip_tokenizer(Path(tmp) / "tokenizer"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(2)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_CONFIG,
    )
    text_encoder = CLIPTextModel(text_config)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDPMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # Ship the tokenizer in CLIP's own layout (as SD 1.5 does), not transformers' re-save of it,
    # which records load-time flags (local_files_only) and so differs between builds.
    shutil.rmtree(out_dir / "tokenizer")
    train_clip_tokenizer(out_dir / "tokenizer")
    return out_dir


def ensure_tiny() -> Path:
    """The cached tiny model folder, built atomically on first use."""
    target = cache_root() / "models" / f"tiny-v{TINY_VERSION}-{_build_key()}"
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        build_tiny(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
