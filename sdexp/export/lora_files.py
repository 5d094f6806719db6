"""Write a trained LoRA as a kohya file (A1111/ComfyUI) and a diffusers file, atomically and reproducibly.

safetensors writes its metadata in hash-map order, which changes from process to process; files
here get a canonical header (sorted metadata) so that same weights + metadata → same bytes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from sdexp.atomic import atomic_write_bytes
from sdexp.export.kohya import TEXT_MODEL, clean_module_name, to_kohya_state_dict

KOHYA_FILE = "lora.safetensors"
DIFFUSERS_DIR = "diffusers"
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"


# ---------------------------------------------------------------- safetensors bytes


def _split_safetensors(data: bytes) -> tuple[dict, bytes]:
    """Bytes of a safetensors file → (header dict, tensor data section)."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def canonical_safetensors(data: bytes, extra_metadata: dict[str, str] | None = None) -> bytes:
    """Re-serialize a safetensors file's header with sorted metadata (plus ``extra_metadata``)."""
    header, body = _split_safetensors(data)
    metadata = {**header.pop("__metadata__", {}), **(extra_metadata or {})}
    ordered = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    ordered.update(header)  # tensor entries keep safetensors' (deterministic) offset order
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data section to 8 bytes
    return struct.pack("<Q", len(text)) + text + body


def addnet_hash_bytes(data: bytes) -> str:
    """sha256 of the tensor data section: kohya's ``sshs_model_hash``, A1111's LoRA hash."""
    return hashlib.sha256(_split_safetensors(data)[1]).hexdigest()


def addnet_hash_file(path: str | Path) -> str:
    """:func:`addnet_hash_bytes` of a file on disk, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + length)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- reading LoRA layers


def lora_layers(
    model: torch.nn.Module, adapter: str = "default"
) -> dict[str, tuple[torch.Tensor, torch.Tensor, int, float, torch.Tensor | None]]:
    """{module name: (lora_A weight, lora_B weight, rank, kohya alpha, DoRA magnitude or None)}
    of a peft-injected model."""
    from peft.tuners.lora import LoraLayer

    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        if module.lora_bias.get(adapter):
            raise ValueError(f"{name}: LoRA biases cannot be written as a kohya LoRA")
        r, lora_alpha = module.r[adapter], float(module.lora_alpha[adapter])
        alpha = (
            lora_alpha * math.sqrt(r) if module.use_rslora.get(adapter) else lora_alpha
        )  # alpha/r = scaling
        magnitude = module.lora_magnitude_vector[adapter].weight if module.use_dora.get(adapter) else None
        layers[name] = (module.lora_A[adapter].weight, module.lora_B[adapter].weight, r, alpha, magnitude)
    return layers


def _peft_state(
    model: torch.nn.Module, adapter: str, rank: int, alpha: float, what: str
) -> tuple[dict[str, torch.Tensor], dict[str, float], bool]:
    """peft state dict + kohya alphas; the rank/alpha given for the metadata must be the model's."""
    layers = lora_layers(model, adapter)
    if not layers:
        raise ValueError(f"{what} has no LoRA adapter {adapter!r}")
    rslora = False
    sd, alphas = {}, {}
    for name, (a, b, r, kohya_alpha, magnitude) in layers.items():
        module = model.get_submodule(name)
        rslora = rslora or bool(module.use_rslora.get(adapter))
        if r != rank or not math.isclose(float(module.lora_alpha[adapter]), float(alpha)):
            raise ValueError(
                f"{what} module {name} has rank {r} alpha {module.lora_alpha[adapter]}, "
                f"not the rank {rank} alpha {alpha} given for the metadata"
            )
        name = clean_module_name(name)
        sd[f"{name}.lora_A.weight"], sd[f"{name}.lora_B.weight"] = a, b
        if magnitude is not None:
            sd[f"{name}.lora_magnitude_vector"] = magnitude
        alphas[name] = kohya_alpha
    return sd, alphas, rslora


def _date() -> str:
    """Today as YYYY-MM-DD (UTC), or SOURCE_DATE_EPOCH's date for reproducible builds."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    now = (
        _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc)
        if epoch
        else _dt.datetime.now(_dt.timezone.utc)
    )
    return now.date().isoformat()


def lora_metadata(
    *,
    family,
    prediction_type: str,
    rank,
    alpha,
    text_encoder_ranks: Sequence[int] = (),
    text_encoder_alphas: Sequence[float] = (),
    resolution,
    steps,
    title,
    targets,
    base_model,
    dora: bool = False,
) -> dict[str, str]:
    """kohya ``ss_*`` and Stability ``modelspec.*`` metadata (the family's part from the family),
    plus ``sdexp.*`` provenance. ``text_encoder_ranks``: one per trained text encoder, none if none."""
    width, height = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(int(rank)),
        "ss_network_alpha": str(float(alpha)),
        "ss_resolution": f"({width}, {height})",
        "ss_steps": str(int(steps)),
        "ss_output_name": title,
        "ss_sd_model_name": str(base_model),
        "ss_network_train_unet_only": str(not text_encoder_ranks),
        "ss_network_train_text_encoder_only": "False",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.implementation": "diffusers",
        "modelspec.title": title,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": _date(),
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
        "sdexp.targets": targets,
        "sdexp.base_model": str(base_model),
        "sdexp.family": family.name,
        **family.lora_metadata(prediction_type),
    }
    network_args = {}
    if targets == "all":  # conv layers too (LoCon); kohya records their dim/alpha here
        network_args.update({"conv_dim": str(int(rank)), "conv_alpha": str(float(alpha))})
    if dora:  # LyCORIS's name for weight decomposition; ComfyUI/A1111 read dora_scale tensors
        network_args.update({"algo": "lora", "dora_wd": "True"})
        meta["sdexp.dora"] = "True"
    if network_args:
        meta["ss_network_args"] = json.dumps(network_args)
    for i, (r, a) in enumerate(zip(text_encoder_ranks, text_encoder_alphas, strict=True)):
        suffix = "" if i == 0 else f"_{i + 1}"
        meta[f"sdexp.text_encoder{suffix}_rank"] = str(int(r))
        meta[f"sdexp.text_encoder{suffix}_alpha"] = str(float(a))
    return meta


def _adapter_metadata(sd: dict[str, torch.Tensor], rank: int, alpha: float, rslora: bool) -> dict:
    """The LoraConfig kwargs diffusers rebuilds the adapter from (so alpha ≠ rank round-trips)."""
    modules = sorted({k.rsplit(".lora_", 1)[0].removeprefix(TEXT_MODEL) for k in sd})
    dora = any(k.endswith(".lora_magnitude_vector") for k in sd)
    return {
        "r": int(rank),
        "lora_alpha": float(alpha),
        "target_modules": modules,
        "use_rslora": rslora,
        "use_dora": dora,
    }


def _te_key(key: str) -> str:
    """transformers 5 loads a text encoder's DoRA magnitude only as ``….lora_magnitude_vector.weight``
    (the parameter's own name); UNet keys keep peft's bare form, which diffusers maps itself."""
    return key + ".weight" if key.endswith(".lora_magnitude_vector") else key


def save_lora(
    out_dir: str | Path,
    *,
    unet: torch.nn.Module,
    text_encoders: Sequence[torch.nn.Module] = (),
    family,
    prediction_type: str,
    rank: int,
    alpha: float,
    text_encoder_ranks: Sequence[int] = (),
    text_encoder_alphas: Sequence[float] = (),
    resolution: int | tuple[int, int],
    steps: int,
    title: str,
    targets: str,
    base_model: str,
    extra_metadata: dict[str, str] | None = None,
    adapter_name: str = "default",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Path]:
    """Write ``out_dir/lora.safetensors`` (kohya) and ``out_dir/diffusers/pytorch_lora_weights.safetensors``.

    ``text_encoders`` are the trained (LoRA-injected) encoders in the family's order (SDXL: both),
    or none; each has its rank and alpha. Names and metadata come from ``family``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text_encoders = tuple(text_encoders)
    ranks = tuple(text_encoder_ranks) or (rank,) * len(text_encoders)
    alphas = tuple(text_encoder_alphas) or (alpha,) * len(text_encoders)
    slots = family.text_encoders[: len(text_encoders)]

    def cpu(sd):
        return {k: v.detach().to("cpu", dtype).contiguous() for k, v in sd.items()}

    unet_sd, unet_alphas, unet_rslora = _peft_state(unet, adapter_name, rank, alpha, "unet")
    unet_sd = cpu(unet_sd)
    te_parts = []  # (slot, state dict, per-module alphas, rslora, rank, alpha)
    for slot, encoder, r, a in zip(slots, text_encoders, ranks, alphas, strict=True):
        sd, te_alphas, rslora = _peft_state(encoder, adapter_name, r, a, slot.attribute)
        te_parts.append((slot, cpu(sd), te_alphas, rslora, r, a))
    unet_config = dict(unet.config) if hasattr(unet, "config") else {}
    kohya_sd = to_kohya_state_dict(
        unet_sd,
        {slot.kohya_prefix: (sd, te_alphas) for slot, sd, te_alphas, *_ in te_parts},
        unet_alpha=unet_alphas,
        unet_namer=lambda m: family.kohya_unet_name(m, unet_config),
    )
    metadata = lora_metadata(
        family=family,
        prediction_type=prediction_type,
        rank=rank,
        alpha=alpha,
        text_encoder_ranks=ranks if text_encoders else (),
        text_encoder_alphas=alphas if text_encoders else (),
        resolution=resolution,
        steps=steps,
        title=title,
        targets=targets,
        base_model=base_model,
        dora=any(
            k.endswith(".lora_magnitude_vector") for k in [*unet_sd, *(k for p in te_parts for k in p[1])]
        ),
    )
    for key, value in (extra_metadata or {}).items():
        if not isinstance(value, str):
            raise TypeError(f"extra_metadata[{key!r}] must be a str, not {type(value).__name__}")
        metadata[key] = value

    from safetensors.torch import save as st_save

    raw = st_save(kohya_sd)
    metadata["sshs_model_hash"] = addnet_hash_bytes(raw)
    paths = {"kohya": atomic_write_bytes(out_dir / KOHYA_FILE, canonical_safetensors(raw, metadata))}

    # diffusers: text-encoder keys keep transformers 4's text_model. prefix (diffusers strips it for
    # transformers 5, ComfyUI expects it); target_modules are suffixes that match either layout.
    layers = {
        "unet_lora_layers": unet_sd,
        "unet_lora_adapter_metadata": _adapter_metadata(unet_sd, rank, alpha, unet_rslora),
    }
    for slot, sd, _, rslora, r, a in te_parts:
        layers[f"{slot.attribute}_lora_layers"] = {
            _te_key(TEXT_MODEL + k.removeprefix(TEXT_MODEL)): v for k, v in sd.items()
        }
        layers[f"{slot.attribute}_lora_adapter_metadata"] = _adapter_metadata(sd, r, a, rslora)
    diffusers_dir = out_dir / DIFFUSERS_DIR
    diffusers_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".lora-", dir=diffusers_dir) as tmp:
        family.pipeline_class().save_lora_weights(tmp, safe_serialization=True, **layers)
        data = (Path(tmp) / DIFFUSERS_FILE).read_bytes()
    provenance = {k: v for k, v in metadata.items() if k.startswith(("modelspec.", "sdexp."))}
    paths["diffusers"] = atomic_write_bytes(
        diffusers_dir / DIFFUSERS_FILE, canonical_safetensors(data, provenance)
    )
    return paths
