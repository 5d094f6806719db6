"""Stable Diffusion 1.5's real UNet and CLIP ViT-L/14 text encoder on the meta device.

Tests check key names, module counts and shapes of the full-size architecture at zero cost
(no weights exist on these machines). Configs match runwayml/stable-diffusion-v1-5.
"""

from __future__ import annotations

SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)

SD15_TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    dropout=0.0,
    initializer_factor=1.0,
    initializer_range=0.02,
    projection_dim=768,
    # The legacy ids stored in SD 1.5's text_encoder/config.json (the tokenizer holds the real ones).
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)

# SD 1.5's VAE (vae/config.json of the released checkpoint).
SD15_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=512,
)

# Known sizes of the real checkpoints, for tests that the configs above are the real ones.
SD15_UNET_PARAMS = 859_520_964
SD15_TEXT_ENCODER_PARAMS = 123_060_480


def build_sd15_meta():
    """(unet, text_encoder) of SD 1.5 on the meta device: real names and shapes, no memory."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG))
    return unet, text_encoder
