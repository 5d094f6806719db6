"""The released architectures on the meta device, built from the shipped configs.

Full-size SD 1.5, SD 2.1 and SDXL models cost no memory on the meta device, so tests check key
names, shapes and single-file layouts of the real models. The parameter counts of the released
checkpoints are recorded here: a shipped config that builds to another size is not the real one.
"""

from __future__ import annotations

import importlib
import json

import torch

from sdexp.models.sd15_meta import SD15_TEXT_ENCODER_PARAMS, SD15_UNET_PARAMS
from sdexp.models.shipped_configs import shipped_dir

VAE_PARAMS = 83_653_863  # the SD VAE (kl-f8), the same architecture in every family
SD21_UNET_PARAMS = 865_910_724
SD21_TEXT_ENCODER_PARAMS = 340_387_840  # 23 of OpenCLIP ViT-H's 24 layers, no projection
SDXL_UNET_PARAMS = 2_567_463_684
SDXL_TEXT_ENCODER_2_PARAMS = 694_659_840  # OpenCLIP ViT-bigG with its text projection

PARAM_COUNTS = {
    "sd15": {"unet": SD15_UNET_PARAMS, "vae": VAE_PARAMS, "text_encoder": SD15_TEXT_ENCODER_PARAMS},
    "sd21": {"unet": SD21_UNET_PARAMS, "vae": VAE_PARAMS, "text_encoder": SD21_TEXT_ENCODER_PARAMS},
    "sd21_base": {"unet": SD21_UNET_PARAMS, "vae": VAE_PARAMS, "text_encoder": SD21_TEXT_ENCODER_PARAMS},
    "sdxl": {
        "unet": SDXL_UNET_PARAMS,
        "vae": VAE_PARAMS,
        "text_encoder": SD15_TEXT_ENCODER_PARAMS,  # CLIP ViT-L, as in SD 1.x
        "text_encoder_2": SDXL_TEXT_ENCODER_2_PARAMS,
    },
}
_MODEL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def build_meta(name: str, components: tuple[str, ...] | None = None) -> dict[str, torch.nn.Module]:
    """{component: module} of released model ``name`` (sd15, sd21, sd21_base, sdxl) on the meta
    device: unet, vae and the text encoders, or only ``components``."""
    folder = shipped_dir(name)
    index = json.loads((folder / "model_index.json").read_text())
    wanted = components or tuple(c for c in _MODEL_COMPONENTS if c in index)
    out = {}
    for component in wanted:
        library, class_name = index[component]
        cls = getattr(importlib.import_module(library), class_name)
        with torch.device("meta"):
            if library == "diffusers":
                out[component] = cls.from_config(cls.load_config(folder, subfolder=component))
            else:
                out[component] = cls(cls.config_class.from_pretrained(folder / component))
    return out


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
