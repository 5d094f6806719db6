"""The one registry of model families, and how a model folder tells which one it is.

family = get_family("sdxl")            # by name (model.family)
family = folder_family(path)           # from a diffusers folder's configs
"""

from __future__ import annotations

from pathlib import Path

from sdexp.errors import ConfigError
from sdexp.models.families.base import ModelFamily, TextEncoderSlot, read_json
from sdexp.models.families.sd1 import SD1
from sdexp.models.families.sd2 import SD2
from sdexp.models.families.sdxl import SDXL

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (SD1(), SD2(), SDXL())}
FAMILY_CHOICES = ("auto", *FAMILIES)

__all__ = [
    "FAMILIES",
    "FAMILY_CHOICES",
    "ModelFamily",
    "TextEncoderSlot",
    "folder_family",
    "get_family",
    "kohya_text_encoder_prefixes",
    "lora_family",
]


def get_family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ConfigError(f"model.family: unknown family {name!r}; choose one of {', '.join(FAMILY_CHOICES)}")
    return FAMILIES[name]


def folder_family(folder: Path) -> ModelFamily | None:
    """The family of a diffusers pipeline folder, from its configs (no weights read); None if unknown.

    SDXL: its pipeline class or a second text encoder. SD 2.x: an OpenCLIP text encoder (gelu, where
    SD 1.x's CLIP uses quick_gelu) or a 1024-wide context. Small test models of each architecture
    keep those traits, so they are recognised too.
    """
    folder = Path(folder)
    index = read_json(folder / "model_index.json")
    cls = str(index.get("_class_name", ""))
    if "XL" in cls or "text_encoder_2" in index:
        return FAMILIES["sdxl"]
    if not cls.startswith("StableDiffusion"):
        return None
    unet = read_json(folder / "unet" / "config.json")
    text = read_json(folder / "text_encoder" / "config.json")
    if unet.get("cross_attention_dim") == 1024 or text.get("hidden_act") == "gelu":
        return FAMILIES["sd2"]
    return FAMILIES["sd1"]


def kohya_text_encoder_prefixes() -> tuple[str, ...]:
    """Every family's kohya text-encoder prefixes, longest first (so lora_te1 is not read as lora_te)."""
    prefixes = {slot.kohya_prefix for f in FAMILIES.values() for slot in f.text_encoders}
    return tuple(sorted(prefixes, key=lambda p: (-len(p), p)))


def lora_family(
    metadata: dict[str, str], text_encoder_parts: set[str], context_dim: int | None
) -> str | None:
    """The family a LoRA file was made for: its kohya/modelspec metadata, else its text-encoder
    parts (a second encoder: SDXL), else the width of its cross-attention keys."""
    version = metadata.get("ss_base_model_version", "")
    architecture = metadata.get("modelspec.architecture", "")
    for family in FAMILIES.values():
        if (version and version.startswith(family.kohya_version_prefix)) or (
            architecture and architecture.startswith(family.modelspec_prefix)
        ):
            return family.name
    for family in FAMILIES.values():
        if len(family.text_encoders) > 1 and text_encoder_parts & {
            family.text_encoders[1].attribute,
            family.text_encoders[1].kohya_prefix,
        }:
            return family.name
    return next((f.name for f in FAMILIES.values() if f.context_dim == context_dim), None)
