"""Stable Diffusion 2.x: OpenCLIP ViT-H/14 text encoder in diffusers' CLIPTextModel layout (23 of
its 24 layers, last hidden state), linear proj_in/out, 768 px v-prediction or 512 px epsilon.
Encoding and naming are SD 1.x's; the encoder's original layout, metadata and configs differ."""

from __future__ import annotations

from dataclasses import replace

from sdexp.models.families.sd1 import SD1


class SD2(SD1):
    name = "sd2"
    label = "SD 2.x"
    resolution = 768
    default_prediction_type = "v_prediction"
    # SD 1.x's slot, but the original layout holds OpenCLIP's tensors (resblocks, fused qkv).
    text_encoders = (
        replace(SD1.text_encoders[0], single_file_prefix="cond_stage_model.model.", open_clip_layout=True),
    )
    kohya_base_model_version = "sd_v2"
    modelspec_architecture = "stable-diffusion-v2-768-v"
    kohya_version_prefix = "sd_v2"  # how ss_base_model_version starts in files made for it
    modelspec_prefix = "stable-diffusion-v2"
    context_dim = 1024  # cross-attention width of the released models
    config_names = {"v_prediction": "sd21", "epsilon": "sd21_base"}

    def architecture(self, prediction_type: str) -> str:
        return "stable-diffusion-v2-768-v" if prediction_type == "v_prediction" else "stable-diffusion-v2-512"
