"""The one place base models are found and loaded (built-in names and diffusers folders).

Later families (SD 2, SDXL), single-file checkpoints and the pretrained tiny-shapes model extend
``resolve_model_dir`` and ``load_base``; callers only see ``BaseModel``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdexp.config import BUILTIN_MODELS
from sdexp.errors import UserError
from sdexp.models.family import ModelFamily, get_family

REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# tiny_shapes is trained by `sdexp pretrain` (tools/tiny_shapes_recipe.sh) and ships in the package.
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class BaseModel:
    """A loaded base model: components, its family, and where it came from."""

    name: str
    path: Path
    family: ModelFamily
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    native_resolution: int

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    def pipeline(self, scheduler=None):
        """A StableDiffusionPipeline over these (possibly LoRA-wrapped) components."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=scheduler or self.noise_scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def resolve_model_dir(name_or_path: str | Path | None, *, key: str = "model.path") -> Path:
    """A built-in name or a diffusers folder → the folder; a clear UserError otherwise."""
    if name_or_path is None:
        raise UserError(f"{key}: no model given; use model=tiny or model.path=DIR")
    if str(name_or_path) == "tiny":
        from sdexp.models.tiny import ensure_tiny

        return ensure_tiny()
    if str(name_or_path) in BUILTIN_MODELS:
        return BUILTIN_DIR / str(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise UserError(
            f"{key}: {path} does not exist; pass a diffusers-format Stable Diffusion folder "
            f"(with model_index.json) or a built-in name ({', '.join(BUILTIN_MODELS)})"
        )
    index = path / "model_index.json"
    if not path.is_dir() or not index.exists():
        raise UserError(
            f"{key}: {path} is not a diffusers model folder (no model_index.json); "
            "convert a single-file checkpoint with diffusers' conversion script or pass the folder"
        )
    try:
        components = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{key}: {index} is not valid JSON ({err}); the model folder is damaged") from None
    missing = [c for c in REQUIRED_COMPONENTS if c not in components or not (path / c).is_dir()]
    if missing:
        raise UserError(
            f"{key}: {path} lacks {', '.join(missing)}; it is not a Stable Diffusion 1.x pipeline folder"
        )
    return path


def native_resolution(name_or_path: str | Path, family: str = "sd1") -> int:
    """The resolution a base was trained at, from its configs without loading weights:
    the UNet's sample size times the VAE's downsampling (tiny: 64, tiny_shapes: 64, SD 1.5: 512)."""
    if str(name_or_path) == "tiny":
        from sdexp.models.tiny import TINY_RESOLUTION

        return TINY_RESOLUTION
    try:
        folder = resolve_model_dir(name_or_path)
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (UserError, OSError, KeyError, TypeError, ValueError):
        return get_family(family).resolution


def detect_variant(model_dir: Path, component: str = "unet") -> str | None:
    """'fp16' when a folder holds only `*.fp16.*` weights (as some SD 1.5 downloads do)."""
    files = [p.name for p in (model_dir / component).glob("diffusion_pytorch_model*")]
    if any(n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin") for n in files):
        return None
    return "fp16" if any(".fp16." in n for n in files) else None


def _check_safe_weights(model_dir: Path, variant: str | None, allow_pickle: bool) -> None:
    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    for component in ("unet", "vae", "text_encoder"):
        folder = model_dir / component
        if not any(p.name.endswith(suffix) for p in folder.iterdir()):
            if allow_pickle:
                continue
            raise UserError(
                f"model.path: {folder} has no {suffix} weights (only pickle .bin files?); pickle files can "
                "run code when loaded: convert them to safetensors, or set model.allow_pickle=true"
            )


def load_base(
    name_or_path: str | Path,
    *,
    family: str = "sd1",
    variant: str | None = None,
    dtype: torch.dtype = torch.float32,
    prediction_type: str | None = None,
    allow_pickle: bool = False,
) -> BaseModel:
    """Load the components of a base model onto the CPU in ``dtype``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model_dir = resolve_model_dir(name_or_path)
    fam = get_family(family)
    variant = variant or detect_variant(model_dir)
    _check_safe_weights(model_dir, variant, allow_pickle)
    kwargs = dict(torch_dtype=dtype, variant=variant, use_safetensors=not allow_pickle)
    try:
        unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(
            model_dir / "text_encoder", dtype=dtype, variant=variant, use_safetensors=not allow_pickle
        )
        tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
        scheduler_kwargs = {"prediction_type": prediction_type} if prediction_type else {}
        noise_scheduler = DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler", **scheduler_kwargs)
    except (OSError, ValueError, json.JSONDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"model.path: could not load {model_dir}: {first}") from None
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
    return BaseModel(
        name=str(name_or_path) if str(name_or_path) in BUILTIN_MODELS else model_dir.name,
        path=model_dir,
        family=fam,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=noise_scheduler,
        native_resolution=native_resolution(name_or_path, family),
    )
