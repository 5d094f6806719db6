"""A base model as one checkpoint file: what ``loading`` needs to take ``model.path=FILE``, and what
``sdexp export-model --format single-file`` writes.

The generic parts (key layout, classification, diffusers' converters) live in ``single_file`` and
``ldm_layout``; this module joins them with the families. A file written by sdexp carries its
diffusers configs (and a tokenizer that is not CLIP's own) in its metadata, so it loads back
exactly whatever its architecture (the tiny test models included); any other file loads with the
family's shipped configs (``sdexp/models/configs``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch

from sdexp.errors import UserError
from sdexp.models.families import FAMILIES, ModelFamily
from sdexp.models.single_file import BASE_KINDS, classify_keys, describe, read_keys, read_state_dict

CONFIGS_KEY = "sdexp.diffusers_configs"  # JSON: {relative path: file text} of the model's configs
FAMILY_KEY = "sdexp.family"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CLIP_VOCAB_SIZE = 49408  # a tokenizer of this size is CLIP's own, regenerated from open_clip's BPE


def _kind(path: Path, allow_pickle: bool) -> str:
    if path.suffix in PICKLE_SUFFIXES:
        return classify_keys(read_state_dict(path, allow_pickle=allow_pickle))
    return classify_keys(read_keys(path))


def check_base_file(path: Path, *, key: str = "model.path", allow_pickle: bool = False) -> str:
    """The family name of a base-model checkpoint file; one UserError naming what it is otherwise."""
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise UserError(
            f"{key}: {path} is a pickle checkpoint, which can run code when loaded; use its .safetensors "
            "version, or set model.allow_pickle=true if you trust where it came from"
        )
    if path.suffix not in (".safetensors", *PICKLE_SUFFIXES):
        raise UserError(f"{key}: {path} is not a checkpoint (.safetensors) nor a diffusers folder")
    kind = _kind(path, allow_pickle)
    if kind not in BASE_KINDS:
        raise UserError(f"{key}: {path} is {describe(kind)}")
    return kind


def is_base_checkpoint(path: Path) -> bool:
    try:
        return classify_keys(read_keys(path)) in BASE_KINDS
    except UserError:
        return False


def _metadata(path: Path) -> dict[str, str]:
    if path.suffix != ".safetensors":
        return {}
    from sdexp.inspect import read_safetensors_header

    return read_safetensors_header(path)[1]


def file_family(path: Path) -> ModelFamily:
    """The family a checkpoint file was written for (sdexp's own record, else its keys)."""
    meta = _metadata(Path(path))
    if meta.get(FAMILY_KEY) in FAMILIES:
        return FAMILIES[meta[FAMILY_KEY]]
    kind = (
        _kind(Path(path), allow_pickle=True)
        if Path(path).suffix in PICKLE_SUFFIXES
        else classify_keys(read_keys(path))
    )
    if kind not in BASE_KINDS:
        raise UserError(f"model.path: {path} is {describe(kind)}")
    return FAMILIES[kind]


def file_prediction_type(path: Path, family: ModelFamily) -> str:
    """From the file's metadata (``modelspec.prediction_type``, sdexp's configs), else the family's
    default: a single SD 2.x file cannot tell 768 px v-prediction from the 512 px epsilon base."""
    meta = _metadata(Path(path))
    configs = json.loads(meta[CONFIGS_KEY]) if CONFIGS_KEY in meta else {}
    scheduler = json.loads(configs.get("scheduler/scheduler_config.json", "{}"))
    if scheduler.get("prediction_type"):
        return scheduler["prediction_type"]
    spec = meta.get("modelspec.prediction_type", "")
    if spec:
        return "v_prediction" if spec.startswith("v") else "epsilon"
    return family.default_prediction_type


def file_config_dir(path: Path, family: ModelFamily, prediction_type: str | None = None) -> Path:
    """The diffusers config folder that describes the file: its own embedded configs (written by
    sdexp), else the family's shipped configs for the prediction type."""
    from sdexp.models.shipped_configs import config_dir

    meta = _metadata(Path(path))
    if CONFIGS_KEY not in meta:
        return config_dir(family.config_name(prediction_type or file_prediction_type(path, family)))
    return _materialise(meta[CONFIGS_KEY])


def _materialise(configs_json: str) -> Path:
    """The embedded configs as a folder in the cache, built once per distinct content."""
    from sdexp.atomic import build_folder_once
    from sdexp.models.tiny import cache_root

    def build(staging: Path) -> None:
        for relative, text in json.loads(configs_json).items():
            file = staging / relative
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(text)
        _complete_clip_tokenizers(staging)

    digest = hashlib.sha256(configs_json.encode()).hexdigest()[:16]
    return build_folder_once(cache_root() / "configs" / f"embedded-{digest}", build, "model_index.json")


def _complete_clip_tokenizers(folder: Path) -> None:
    """Tokenizer folders written without their vocabulary are CLIP's own: regenerate it."""
    from sdexp.models.clip_vocab import tokenizer_files
    from sdexp.models.shipped_configs import tokenizer_folders

    for name, pad_token in tokenizer_folders(folder).items():
        if not (folder / name / "vocab.json").exists():
            tokenizer_files(folder / name, pad_token)


def checkpoint_parts(family: ModelFamily, tensors) -> dict[str, list[str]]:
    """Tensor names per component of an original-layout file (for ``sdexp inspect``)."""
    parts: dict[str, list[str]] = {"unet": [], "vae": [], **{a: [] for a in family.text_encoder_attributes}}
    prefixes = [("unet", family.unet_prefix), ("unet", "model_ema."), ("vae", family.vae_prefix)]
    prefixes += [(slot.attribute, slot.single_file_prefix) for slot in family.text_encoders]
    for name in tensors:
        part = next((p for p, prefix in prefixes if name.startswith(prefix)), None)
        if part is not None:
            parts[part].append(name)
    return {k: v for k, v in parts.items() if v}


def load_file_components(
    path: Path, family: ModelFamily, config_dir: Path, *, dtype: torch.dtype, allow_pickle: bool
) -> dict:
    """unet, vae, text_encoders, tokenizers of a checkpoint file (CPU, ``dtype``), fully offline."""
    from transformers import CLIPTokenizer

    from sdexp.models.single_file import load_components

    names = ("unet", "vae", *family.text_encoder_attributes)
    loaded = load_components(path, config_dir, names, dtype, allow_pickle=allow_pickle)
    return {
        "unet": loaded["unet"],
        "vae": loaded["vae"],
        "text_encoders": tuple(loaded[a] for a in family.text_encoder_attributes),
        "tokenizers": tuple(
            CLIPTokenizer.from_pretrained(config_dir / a) for a in family.tokenizer_attributes
        ),
    }


def load_vae_file(path: Path, config_dir: Path):
    """A VAE alone (``model.vae=FILE``: e.g. SDXL's fp16-fix) in the base's VAE config."""
    from sdexp.models.single_file import load_components

    kind = classify_keys(read_keys(path))
    if kind not in ("vae", *BASE_KINDS):
        raise UserError(f"model.vae: {path} is {describe(kind)}")
    return load_components(path, config_dir, ("vae",))["vae"]


# ---------------------------------------------------------------- writing


def _config_texts(base) -> dict[str, str]:
    """The model's diffusers configs (and a non-CLIP tokenizer's files) as {relative path: text}."""
    family = base.family
    texts = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        family.pipeline(base).save_config(folder)
        base.unet.save_config(folder / "unet")
        base.vae.save_config(folder / "vae")
        base.noise_scheduler.save_config(folder / "scheduler")
        from sdexp.models.loading import model_config_dir

        source = model_config_dir(base.path, family, base.prediction_type)
        for slot, encoder, tokenizer in zip(
            family.text_encoders, base.text_encoders, base.tokenizers, strict=True
        ):
            (folder / slot.attribute).mkdir()
            encoder.config.to_json_file(folder / slot.attribute / "config.json")
            # The tokenizer's files as the model has them (CLIP's own layout); CLIP's own vocabulary
            # is left out and regenerated from open_clip's BPE on load.
            own_clip = len(tokenizer) == CLIP_VOCAB_SIZE
            shutil.copytree(
                source / slot.tokenizer_attribute,
                folder / slot.tokenizer_attribute,
                ignore=shutil.ignore_patterns(
                    *(("vocab.json", "merges.txt", "tokenizer.json") if own_clip else ())
                ),
            )
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                texts[str(file.relative_to(folder))] = file.read_text()
    return texts


def write_base_file(base, path: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """The whole model as one original-layout ``.safetensors`` (AUTOMATIC1111, ComfyUI), atomically,
    with modelspec metadata and the configs it loads back with."""
    from sdexp.models.single_file import write_single_file

    family = base.family
    prediction = base.prediction_type
    texts = _config_texts(base)
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": family.architecture(prediction),
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models"
        if family.name == "sdxl"
        else "https://github.com/Stability-AI/stablediffusion",
        "modelspec.title": base.name,
        "modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon",
        "modelspec.resolution": f"{base.native_resolution}x{base.native_resolution}",
        FAMILY_KEY: family.name,
        CONFIGS_KEY: json.dumps(texts, sort_keys=True),
    }
    return write_single_file(Path(path), family.single_file_tensors(base), metadata, dtype=dtype)
