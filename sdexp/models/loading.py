"""The one door every base model comes through: built-in names, diffusers folders, single files.

``resolve_model`` finds the model (and fails with one line on anything that is not a base model),
``model_family`` says which family it is, ``load_base`` loads its components through that family.
Callers only see ``BaseModel``; nothing here knows what differs between families.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdexp.config import BUILTIN_MODELS
from sdexp.errors import UserError
from sdexp.models.conditioning import Conditioning
from sdexp.models.families import ModelFamily, folder_family, get_family

# tiny_shapes is trained by `sdexp pretrain` (tools/tiny_shapes_recipe.sh) and ships in the package.
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SAFE_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


@dataclass
class BaseModel:
    """A loaded base model: its components (text encoders and tokenizers as ordered tuples, one per
    encoder of the family), its family, and where it came from (a folder or a single file)."""

    name: str
    path: Path
    family: ModelFamily
    unet: Any
    vae: Any
    text_encoders: tuple
    tokenizers: tuple
    noise_scheduler: Any
    native_resolution: int

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def modules(self) -> tuple[torch.nn.Module, ...]:
        return (self.unet, self.vae, *self.text_encoders)

    def pipeline(self, scheduler=None):
        """The family's pipeline over these (possibly adapter-wrapped) components."""
        return self.family.pipeline(self, scheduler)

    def encode(self, prompts: list[str]) -> Conditioning:
        return self.family.encode_text(self.text_encoders, self.tokenizers, list(prompts))


def _builtin_folder(name: str) -> Path:
    from sdexp.models.tiny import TINY_MODELS, ensure_tiny

    if name in TINY_MODELS:
        return ensure_tiny(name)
    return BUILTIN_DIR / name


def resolve_model(
    name_or_path: str | Path | None, *, key: str = "model.path", allow_pickle: bool = False
) -> Path:
    """A built-in name, a diffusers folder or a single-file checkpoint → its path; one clear
    UserError for anything else (a missing path, a LoRA or VAE file, a pickle without consent)."""
    if name_or_path is None:
        raise UserError(f"{key}: no model given; use model=tiny or model.path=DIR_OR_FILE")
    if str(name_or_path) in BUILTIN_MODELS:
        return _builtin_folder(str(name_or_path))
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise UserError(
            f"{key}: {path} does not exist; pass a Stable Diffusion checkpoint (.safetensors), a diffusers "
            f"folder (with model_index.json) or a built-in name ({', '.join(BUILTIN_MODELS)})"
        )
    if path.is_file():
        from sdexp.models.checkpoint_file import check_base_file

        check_base_file(path, key=key, allow_pickle=allow_pickle)
        return path
    if not (path / "model_index.json").exists():
        raise UserError(
            f"{key}: {path} is a folder with no model_index.json: neither a diffusers model folder nor a "
            "checkpoint file; pass the .safetensors file itself or the diffusers folder"
        )
    family = folder_family(path)
    if family is None:
        raise UserError(f"{key}: {path}/model_index.json does not describe a Stable Diffusion pipeline")
    missing = [c for c in family.component_names() if not (path / c).is_dir()]
    if missing:
        raise UserError(
            f"{key}: {path} lacks {', '.join(missing)}; it is not a complete {family.label} folder"
        )
    return path


def model_family(path: Path, requested: str = "auto", *, key: str = "model.family") -> ModelFamily:
    """The family of a resolved model; ``requested`` (model.family) must agree unless it is ``auto``."""
    if Path(path).is_file():
        from sdexp.models.checkpoint_file import file_family

        detected = file_family(path)
    else:
        detected = folder_family(path)
    if requested != "auto":
        wanted = get_family(requested)
        if detected is not None and detected is not wanted:
            raise UserError(
                f"{key}: {requested} was asked for, but {path} is an {detected.label} model; "
                f"set {key}={detected.name} (or {key}=auto)"
            )
        return wanted
    if detected is None:
        raise UserError(f"{key}: cannot tell the family of {path}; set {key}=sd1|sd2|sdxl")
    return detected


def model_config_dir(path: Path, family: ModelFamily, prediction_type: str | None = None) -> Path:
    """The diffusers folder whose configs describe the model: the folder itself, or for a single
    file the configs written into it by sdexp, else the family's shipped configs."""
    if not Path(path).is_file():
        return Path(path)
    from sdexp.models.checkpoint_file import file_config_dir

    return file_config_dir(path, family, prediction_type)


def native_resolution(
    name_or_path: str | Path, family: str = "auto", prediction_type: str | None = None
) -> int:
    """The resolution a base was trained at, from its configs without loading weights: the UNet's
    sample size times the VAE's downsampling (tiny: 64, SD 1.5: 512, SD 2.1: 768, SDXL: 1024)."""
    from sdexp.models.families.base import read_json

    try:
        path = resolve_model(name_or_path)
        fam = model_family(path, family)
        folder = model_config_dir(path, fam, prediction_type)
        unet = read_json(folder / "unet" / "config.json")
        vae = read_json(folder / "vae" / "config.json")
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (UserError, OSError, KeyError, TypeError, ValueError):
        return get_family(family).resolution if family != "auto" else 512


def detect_variant(model_dir: Path, component: str = "unet") -> str | None:
    """'fp16' when a folder holds only `*.fp16.*` weights (as some SD 1.5 downloads do)."""
    if Path(model_dir).is_file():
        return None
    files = [p.name for p in (model_dir / component).glob("diffusion_pytorch_model*")]
    if any(n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin") for n in files):
        return None
    return "fp16" if any(".fp16." in n for n in files) else None


def _check_safe_weights(
    model_dir: Path, family: ModelFamily, variant: str | None, allow_pickle: bool
) -> None:
    suffix = f".{variant}.safetensors" if variant else SAFE_SUFFIX
    for component in ("unet", "vae", *family.text_encoder_attributes):
        folder = model_dir / component
        if not any(p.name.endswith(suffix) for p in folder.iterdir()):
            if allow_pickle:
                continue
            raise UserError(
                f"model.path: {folder} has no {suffix} weights (only pickle .bin files?); pickle files can "
                "run code when loaded: convert them to safetensors, or set model.allow_pickle=true"
            )


def resolve_vae_dtype(
    setting: str, weight_dtype: torch.dtype, family: ModelFamily, *, vae_given: bool
) -> torch.dtype:
    """``model.vae_dtype``: ``auto`` is the frozen weights' dtype, except fp16 for a family whose VAE
    overflows in it (SDXL) unless a replacement VAE (an fp16-safe one) is given: then fp32."""
    if setting != "auto":
        return DTYPES[setting]
    if weight_dtype == torch.float16 and not family.vae_fp16_safe and not vae_given:
        return torch.float32
    return weight_dtype


def load_base(
    name_or_path: str | Path,
    *,
    family: str = "auto",
    variant: str | None = None,
    dtype: torch.dtype = torch.float32,
    vae_dtype: str = "auto",
    vae: str | Path | None = None,
    prediction_type: str | None = None,
    zero_terminal_snr: bool = False,
    allow_pickle: bool = False,
) -> BaseModel:
    """Load a base model's components onto the CPU: frozen weights in ``dtype``, the VAE in
    ``vae_dtype`` (``auto``: see ``resolve_vae_dtype``), optionally replaced by ``vae`` (a folder or file).
    ``zero_terminal_snr`` rescales the noise schedule so its last step is pure noise (needs v-prediction)."""
    from diffusers import DDPMScheduler

    path = resolve_model(name_or_path, allow_pickle=allow_pickle)
    fam = model_family(path, family)
    config_dir = model_config_dir(path, fam, prediction_type)
    try:
        if path.is_file():
            from sdexp.models.checkpoint_file import load_file_components

            parts = load_file_components(path, fam, config_dir, dtype=dtype, allow_pickle=allow_pickle)
        else:
            variant = variant or detect_variant(path)
            _check_safe_weights(path, fam, variant, allow_pickle)
            parts = fam.load_folder(path, dtype=dtype, variant=variant, allow_pickle=allow_pickle)
        scheduler_kwargs = {"prediction_type": prediction_type} if prediction_type else {}
        if zero_terminal_snr:
            scheduler_kwargs["rescale_betas_zero_snr"] = True
        noise_scheduler = DDPMScheduler.from_pretrained(config_dir, subfolder="scheduler", **scheduler_kwargs)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"model.path: could not load {path}: {first}") from None
    if zero_terminal_snr and noise_scheduler.config.prediction_type != "v_prediction":
        raise UserError(
            "train.zero_terminal_snr: a zero-SNR schedule needs v-prediction (epsilon cannot be predicted "
            "from pure noise); set model.prediction_type=v_prediction or train.zero_terminal_snr=false"
        )
    if vae is not None:
        parts["vae"] = load_vae(vae, fam, config_dir)
    wanted = resolve_vae_dtype(vae_dtype, dtype, fam, vae_given=vae is not None)
    if parts["vae"].dtype != wanted:
        parts["vae"].to(wanted)
    base = BaseModel(
        name=str(name_or_path)
        if str(name_or_path) in BUILTIN_MODELS
        else path.stem
        if path.is_file()
        else path.name,
        path=path,
        family=fam,
        unet=parts["unet"],
        vae=parts["vae"],
        text_encoders=tuple(parts["text_encoders"]),
        tokenizers=tuple(parts["tokenizers"]),
        noise_scheduler=noise_scheduler,
        native_resolution=native_resolution(name_or_path, fam.name, prediction_type),
    )
    for module in base.modules:
        module.requires_grad_(False)
        module.eval()
    return base


def load_vae(vae: str | Path, family: ModelFamily, config_dir: Path):
    """A replacement VAE (``model.vae``): a diffusers VAE folder, a pipeline folder, or a single file."""
    from diffusers import AutoencoderKL

    path = Path(vae).expanduser()
    if not path.exists():
        raise UserError(
            f"model.vae: {path} does not exist; pass a VAE .safetensors file or a diffusers VAE folder"
        )
    try:
        if path.is_dir():
            sub = "vae" if (path / "vae" / "config.json").exists() else None
            return AutoencoderKL.from_pretrained(path, subfolder=sub)
        if path.suffix != SAFE_SUFFIX:
            raise UserError(f"model.vae: {path} is not a .safetensors file; pickle files are not opened")
        from sdexp.models.checkpoint_file import load_vae_file

        return load_vae_file(path, config_dir)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"model.vae: could not load {path} as a {family.label} VAE: {first}") from None
