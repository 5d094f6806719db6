"""What every Stable Diffusion family shares, and the contract each one fills in.

A family owns everything that differs between SD 1.x, SD 2.x and SDXL: which components a model
folder holds and their classes, the pipeline class, prompt encoding into a ``Conditioning``, the
native resolution and prediction type, kohya names and metadata of LoRA files, and the single-file
(original) checkpoint layout. The rest of sdexp asks the family and never names a family itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdexp.models.conditioning import Conditioning


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder of a family: its pipeline attributes, class, and names in LoRA files."""

    attribute: str  # pipeline attribute and folder name: text_encoder, text_encoder_2
    tokenizer_attribute: str  # tokenizer, tokenizer_2
    class_name: str  # transformers class: CLIPTextModel, CLIPTextModelWithProjection
    kohya_prefix: str  # lora_te, lora_te1, lora_te2
    single_file_prefix: str  # where its weights sit in an original-layout checkpoint
    open_clip_layout: bool  # original layout is OpenCLIP's (resblocks, fused qkv), not HF CLIP's
    embedding_key: str = "emb_params"  # its vectors' key in an A1111/ComfyUI embedding file


class ModelFamily:
    """Base class of the SD families; subclasses set the class attributes and override what differs."""

    name: str = ""
    label: str = ""  # for people: "SD 1.x"
    resolution: int = 512
    vae_scaling_factor: float = 0.18215
    default_prediction_type: str = "epsilon"
    pipeline_class_name: str = "StableDiffusionPipeline"
    text_encoders: tuple[TextEncoderSlot, ...] = ()
    kohya_base_model_version: str = ""
    kohya_version_prefix: str = ""
    modelspec_prefix: str = ""
    context_dim: int = 0
    modelspec_architecture: str = ""  # of the base model; LoRA files append /lora
    unet_prefix = "model.diffusion_model."
    vae_prefix = "first_stage_model."
    vae_fp16_safe = True  # SDXL's VAE overflows in fp16 and is kept in fp32 unless replaced
    config_names: dict[str, str] = {}  # prediction type -> shipped config folder (sdexp/models/configs)

    # ----- names ----------------------------------------------------------------------------
    @property
    def text_encoder_attributes(self) -> tuple[str, ...]:
        return tuple(s.attribute for s in self.text_encoders)

    @property
    def tokenizer_attributes(self) -> tuple[str, ...]:
        return tuple(s.tokenizer_attribute for s in self.text_encoders)

    @property
    def text_encoder_kohya_prefixes(self) -> tuple[str, ...]:
        return tuple(s.kohya_prefix for s in self.text_encoders)

    def component_names(self) -> tuple[str, ...]:
        return ("unet", "vae", *self.text_encoder_attributes, *self.tokenizer_attributes, "scheduler")

    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    # ----- loading a diffusers folder ---------------------------------------------------------
    def load_folder(
        self, folder: Path, *, dtype: torch.dtype, variant: str | None, allow_pickle: bool
    ) -> dict:
        """Components of a diffusers folder (CPU, ``dtype``): unet, vae, text_encoders, tokenizers."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTokenizer

        kwargs = dict(torch_dtype=dtype, variant=variant, use_safetensors=not allow_pickle)
        text_encoders = tuple(
            self.text_encoder_class(i).from_pretrained(
                folder / slot.attribute, dtype=dtype, variant=variant, use_safetensors=not allow_pickle
            )
            for i, slot in enumerate(self.text_encoders)
        )
        return {
            "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kwargs),
            "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae", **kwargs),
            "text_encoders": text_encoders,
            "tokenizers": tuple(
                CLIPTokenizer.from_pretrained(folder / slot.tokenizer_attribute)
                for slot in self.text_encoders
            ),
        }

    def pipeline(self, base, scheduler=None):
        """The family's diffusers pipeline over ``base``'s (possibly adapter-wrapped) components."""
        return self.assemble_pipeline(
            unet=base.unet,
            vae=base.vae,
            text_encoders=base.text_encoders,
            tokenizers=base.tokenizers,
            scheduler=scheduler or base.noise_scheduler,
        )

    def assemble_pipeline(self, *, unet, vae, text_encoders, tokenizers, scheduler):
        """The family's pipeline from components (text encoders and tokenizers in the family's order)."""
        parts: dict[str, Any] = {"vae": vae, "unet": unet, "scheduler": scheduler}
        for slot, encoder, tokenizer in zip(self.text_encoders, text_encoders, tokenizers, strict=True):
            parts[slot.attribute] = encoder
            parts[slot.tokenizer_attribute] = tokenizer
        return self.pipeline_class()(**parts, **self.pipeline_options())

    def text_encoder_class(self, index: int = 0):
        import transformers

        return getattr(transformers, self.text_encoders[index].class_name)

    def pipeline_options(self) -> dict[str, Any]:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    # ----- prompts ------------------------------------------------------------------------------
    def tokenize(self, tokenizers, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        """Token ids per text encoder, padded to each tokenizer's length (77), truncated beyond it."""
        return tuple(
            tok(
                list(prompts),
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            for tok in tokenizers
        )

    def encode(self, text_encoders, ids: tuple[torch.Tensor, ...]) -> Conditioning:
        """Token ids → Conditioning; ``text_encoders`` may be accelerate/DDP wrappers of the modules."""
        raise NotImplementedError

    def encode_text(self, text_encoders, tokenizers, prompts: list[str]) -> Conditioning:
        """Tokenize and encode ``prompts`` with these encoders (on their device)."""
        device = text_encoders[0].device
        ids = tuple(t.to(device) for t in self.tokenize(tokenizers, list(prompts)))
        return self.encode(text_encoders, ids)

    def pipeline_text_encoders(self, pipe) -> tuple[tuple, tuple]:
        """(text encoders, tokenizers) of one of the family's pipelines, in the family's order."""
        return (
            tuple(getattr(pipe, a) for a in self.text_encoder_attributes),
            tuple(getattr(pipe, a) for a in self.tokenizer_attributes),
        )

    def condition(self, text: Conditioning, geometry: dict | None) -> Conditioning:
        """Add what the UNet needs besides the text (SDXL: time ids from each item's geometry)."""
        return text

    @property
    def needs_geometry(self) -> bool:
        """Whether ``condition`` reads the items' original size and crop (SDXL)."""
        return False

    # ----- LoRA files ---------------------------------------------------------------------------
    def kohya_unet_name(self, module_name: str, unet_config: dict) -> str:
        """kohya's name of a UNet module: SD 1.x/2.x follow diffusers' paths."""
        from sdexp.export.kohya import clean_module_name

        return "lora_unet_" + clean_module_name(module_name).replace(".", "_")

    def kohya_te_name(self, index: int, module_name: str) -> str:
        from sdexp.export.kohya import kohya_te_name

        return kohya_te_name(module_name, self.text_encoders[index].kohya_prefix)

    def lora_metadata(self, prediction_type: str) -> dict[str, str]:
        """The family's part of a LoRA file's kohya ``ss_*`` / ``modelspec.*`` metadata."""
        v_pred = prediction_type == "v_prediction"
        return {
            "ss_base_model_version": self.kohya_base_model_version,
            "ss_v2": str(self.name == "sd2"),
            "ss_v_parameterization": str(v_pred),
            "modelspec.architecture": f"{self.architecture(prediction_type)}/lora",
        }

    def architecture(self, prediction_type: str) -> str:
        return self.modelspec_architecture

    # ----- single-file checkpoints --------------------------------------------------------------
    def config_name(self, prediction_type: str | None) -> str:
        """The shipped diffusers config a single file of this family loads with."""
        return self.config_names.get(prediction_type or self.default_prediction_type) or next(
            iter(self.config_names.values())
        )

    def single_file_tensors(self, base) -> dict[str, torch.Tensor]:
        """The whole model in the original layout (what AUTOMATIC1111 and ComfyUI load)."""
        from sdexp.models import ldm_layout

        out = {}
        unet_config = dict(base.unet.config)
        for key, value in ldm_layout.unet_to_ldm(base.unet.state_dict(), unet_config).items():
            out[self.unet_prefix + key] = value
        for key, value in ldm_layout.vae_to_ldm(base.vae.state_dict(), dict(base.vae.config)).items():
            out[self.vae_prefix + key] = value
        for slot, encoder in zip(self.text_encoders, base.text_encoders, strict=True):
            out.update(
                {slot.single_file_prefix + k: v for k, v in self._text_encoder_ldm(slot, encoder).items()}
            )
        return out

    def _text_encoder_ldm(self, slot: TextEncoderSlot, encoder) -> dict[str, torch.Tensor]:
        from sdexp.models import ldm_layout

        if not slot.open_clip_layout:
            return ldm_layout.clip_to_ldm(encoder.state_dict())
        projection = getattr(encoder, "text_projection", None)
        weight = projection.weight if projection is not None else None
        return ldm_layout.open_clip_to_ldm(
            encoder.state_dict(), dict(encoder.config.to_dict()), projection=weight
        )

    # ----- what a base knows (forgetting probes) ------------------------------------------------
    general_prompts: tuple[str, ...] = (
        "a photo of a dog in a park",
        "a cup of coffee on a wooden table",
        "a city street at night with neon lights",
        "a mountain lake at sunrise",
        "a portrait photo of an old man",
        "a red sports car on a highway",
        "a bowl of fresh fruit",
        "a watercolor painting of a lighthouse",
        "a cat sleeping on a sofa",
        "a snowy forest in winter",
        "a plate of pasta in a restaurant",
        "an astronaut floating in space",
    )


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
