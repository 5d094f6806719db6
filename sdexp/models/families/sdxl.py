"""SDXL: CLIP ViT-L and OpenCLIP ViT-bigG, penultimate hidden states concatenated (768 + 1280), the
pooled (projected) output of the second, and micro-conditioning on each image's original size,
crop and target size; 1024 px; VAE scaling 0.13025; kohya names follow the original SGM UNet."""

from __future__ import annotations

import torch

from sdexp.models.conditioning import Conditioning
from sdexp.models.families.base import ModelFamily, TextEncoderSlot


class SDXL(ModelFamily):
    name = "sdxl"
    label = "SDXL"
    resolution = 1024
    vae_scaling_factor = 0.13025
    default_prediction_type = "epsilon"
    pipeline_class_name = "StableDiffusionXLPipeline"
    text_encoders = (
        TextEncoderSlot(
            attribute="text_encoder",
            tokenizer_attribute="tokenizer",
            class_name="CLIPTextModel",
            kohya_prefix="lora_te1",
            single_file_prefix="conditioner.embedders.0.transformer.",
            open_clip_layout=False,
            embedding_key="clip_l",
        ),
        TextEncoderSlot(
            attribute="text_encoder_2",
            tokenizer_attribute="tokenizer_2",
            class_name="CLIPTextModelWithProjection",
            kohya_prefix="lora_te2",
            single_file_prefix="conditioner.embedders.1.model.",
            open_clip_layout=True,
            embedding_key="clip_g",
        ),
    )
    kohya_base_model_version = "sdxl_base_v1-0"
    modelspec_architecture = "stable-diffusion-xl-v1-base"
    vae_fp16_safe = False
    kohya_version_prefix = "sdxl"  # how ss_base_model_version starts in files made for it
    modelspec_prefix = "stable-diffusion-xl"
    context_dim = 2048  # cross-attention width of the released models
    config_names = {"epsilon": "sdxl", "v_prediction": "sdxl"}

    def pipeline_options(self) -> dict:
        return {"force_zeros_for_empty_prompt": True, "add_watermarker": False}

    def encode(self, text_encoders, ids) -> Conditioning:
        hidden, pooled = [], None
        for encoder, token_ids in zip(text_encoders, ids, strict=True):
            out = encoder(token_ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # penultimate layer, before the final norm
            if out[0].ndim == 2:  # CLIPTextModelWithProjection: the projected pooled embedding
                pooled = out[0]
        return Conditioning(torch.cat(hidden, dim=-1), pooled)

    @property
    def needs_geometry(self) -> bool:
        return True

    def condition(self, text: Conditioning, geometry: dict | None) -> Conditioning:
        """Time ids [B, 6]: original (h, w), crop (top, left), target (h, w) of each item, as
        StableDiffusionXLPipeline builds them for a generated image."""
        if geometry is None:
            raise ValueError("SDXL conditioning needs each item's original size, crop and target size")
        parts = [
            torch.as_tensor(geometry[k]).reshape(-1, 2)
            for k in ("original_size", "crop_top_left", "target_size")
        ]
        time_ids = torch.cat(parts, dim=1).to(text.embeddings.device, torch.float32)
        if time_ids.shape[0] == 1 and len(text) > 1:
            time_ids = time_ids.expand(len(text), -1)
        return text.with_time_ids(time_ids)

    def kohya_unet_name(self, module_name: str, unet_config: dict) -> str:
        """sd-scripts names SDXL's UNet by the original SGM modules (input_blocks_4_1_…)."""
        from sdexp.export.kohya import clean_module_name
        from sdexp.models.ldm_layout import unet_module_to_ldm

        return "lora_unet_" + unet_module_to_ldm(clean_module_name(module_name), unet_config).replace(
            ".", "_"
        )
