"""Model families as small descriptors, so the trainer never asks "is this SDXL?"."""

from __future__ import annotations

from dataclasses import dataclass

from sdexp.errors import ConfigError


@dataclass(frozen=True)
class ModelFamily:
    """What differs between SD generations: resolution, naming in kohya/modelspec metadata."""

    name: str
    resolution: int
    kohya_base_model_version: str  # ss_base_model_version
    modelspec_architecture: str  # modelspec.architecture of a LoRA, e.g. stable-diffusion-v1/lora
    text_encoder_kohya_prefixes: tuple[str, ...]  # one per text encoder
    text_encoder_attributes: tuple[str, ...]  # pipeline attribute of each text encoder


SD1 = ModelFamily(
    name="sd1",
    resolution=512,
    kohya_base_model_version="sd_v1",
    modelspec_architecture="stable-diffusion-v1/lora",
    text_encoder_kohya_prefixes=("lora_te",),
    text_encoder_attributes=("text_encoder",),
)

FAMILIES = {f.name: f for f in (SD1,)}


def get_family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ConfigError(f"model.family: unknown family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]
