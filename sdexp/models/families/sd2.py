"""Stable Diffusion 2.x: OpenCLIP ViT-H/14 text encoder in diffusers' CLIPTextModel layout (23 of
its 24 layers, last hidden state), linear proj_in/out, 768 px v-prediction or 512 px epsilon."""

from __future__ import annotations

from sdexp.models.conditioning import Conditioning
from sdexp.models.families.base import ModelFamily, TextEncoderSlot


class SD2(ModelFamily):
    name = "sd2"
    label = "SD 2.x"
    resolution = 768
    vae_scaling_factor = 0.18215
    default_prediction_type = "v_prediction"
    pipeline_class_name = "StableDiffusionPipeline"
    text_encoders = (
        TextEncoderSlot(
            attribute="text_encoder",
            tokenizer_attribute="tokenizer",
            class_name="CLIPTextModel",
            kohya_prefix="lora_te",
            single_file_prefix="cond_stage_model.model.",
            open_clip_layout=True,
        ),
    )
    kohya_base_model_version = "sd_v2"
    modelspec_architecture = "stable-diffusion-v2-768-v"
    kohya_version_prefix = "sd_v2"  # how ss_base_model_version starts in files made for it
    modelspec_prefix = "stable-diffusion-v2"
    context_dim = 1024  # cross-attention width of the released models
    config_names = {"v_prediction": "sd21", "epsilon": "sd21_base"}

    def encode(self, text_encoders, ids) -> Conditioning:
        return Conditioning(text_encoders[0](ids[0])[0])

    def architecture(self, prediction_type: str) -> str:
        return "stable-diffusion-v2-768-v" if prediction_type == "v_prediction" else "stable-diffusion-v2-512"
