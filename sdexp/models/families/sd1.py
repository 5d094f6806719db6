"""Stable Diffusion 1.x: one CLIP ViT-L/14 text encoder (last hidden state), 512 px, epsilon."""

from __future__ import annotations

from sdexp.models.conditioning import Conditioning
from sdexp.models.families.base import ModelFamily, TextEncoderSlot


class SD1(ModelFamily):
    name = "sd1"
    label = "SD 1.x"
    resolution = 512
    vae_scaling_factor = 0.18215
    default_prediction_type = "epsilon"
    pipeline_class_name = "StableDiffusionPipeline"
    text_encoders = (
        TextEncoderSlot(
            attribute="text_encoder",
            tokenizer_attribute="tokenizer",
            class_name="CLIPTextModel",
            kohya_prefix="lora_te",
            single_file_prefix="cond_stage_model.transformer.",
            open_clip_layout=False,
        ),
    )
    kohya_base_model_version = "sd_v1"
    modelspec_architecture = "stable-diffusion-v1"
    kohya_version_prefix = "sd_v1"  # how ss_base_model_version starts in files made for it
    modelspec_prefix = "stable-diffusion-v1"
    context_dim = 768  # cross-attention width of the released models
    config_names = {"epsilon": "sd15", "v_prediction": "sd15"}

    def encode(self, text_encoders, ids) -> Conditioning:
        # The last hidden state (after the final layer norm), as the SD 1.x UNet was trained on.
        return Conditioning(text_encoders[0](ids[0])[0])
