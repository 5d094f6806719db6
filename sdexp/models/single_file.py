"""Single-file checkpoints (one ``.safetensors`` from AUTOMATIC1111 / ComfyUI): read, classify, load, write.

Family-independent: which prefixes the original layout uses, what a file holds judged from its
tensor names, loading components through diffusers' own ``from_single_file`` converters (fully
offline, with a local config folder), and writing atomically with deterministic bytes. Key names
in the diffusers → original direction are :mod:`sdexp.models.ldm_layout`'s job.

Pickle checkpoints are opened only when the caller passes ``allow_pickle`` and then with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from sdexp.errors import UserError
from sdexp.inspect import read_safetensors_header

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
EMA_PREFIX = "model_ema."  # LitEma's copy: "model_ema." + the UNet key without its dots
_EMA_UNET = EMA_PREFIX + "diffusion_model"
# Where each text encoder sits, in the order they are tried: SD 1.x (HF CLIP), SD 2.x (OpenCLIP),
# SDXL base (CLIP-L, OpenCLIP-bigG), SDXL refiner (OpenCLIP-bigG alone).
TEXT_ENCODER_PREFIXES = {
    "text_encoder": (
        "cond_stage_model.transformer.",
        "cond_stage_model.model.",
        "conditioner.embedders.0.transformer.",
        "conditioner.embedders.0.model.",
    ),
    "text_encoder_2": ("conditioner.embedders.1.model.",),
}
_SD1_CLIP, _SD2_OPEN_CLIP, _XL_CLIP, _REFINER_OPEN_CLIP = TEXT_ENCODER_PREFIXES["text_encoder"]
_XL_OPEN_CLIP = TEXT_ENCODER_PREFIXES["text_encoder_2"][0]
_LORA_MARKERS = (
    ".lora_down.",
    ".lora_up.",
    ".lora_A.",
    ".lora_B.",
    ".hada_w",
    ".lokr_w",
    "_lora.down.",
    "_lora.up.",
)
_LORA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lycoris_")

# What classify_keys' answers mean, for error messages ("… is {meaning}").
KIND_MEANINGS = {
    "sd1": "an SD 1.x checkpoint (UNet, VAE, CLIP ViT-L text encoder)",
    "sd2": "an SD 2.x checkpoint (UNet, VAE, OpenCLIP ViT-H text encoder)",
    "sdxl": "an SDXL base checkpoint (UNet, VAE, CLIP ViT-L and OpenCLIP ViT-bigG text encoders)",
    "sdxl_refiner": "an SDXL refiner, which only refines SDXL images; fine-tune the SDXL base model instead",
    "lora": "a LoRA, not a base model; pass it with --lora (or as a LoRA to resume from)",
    "vae": "a VAE alone; pass it as model.vae=FILE together with a base model",
    "unet_only": "a UNet without text encoders; use the full checkpoint or a diffusers folder",
    "text_encoder_only": "text encoder weights alone, not a base model",
    "unknown": "no Stable Diffusion layout recognised in its tensor names",
}
BASE_KINDS = ("sd1", "sd2", "sdxl")


def describe(kind: str) -> str:
    """One phrase for an error message: ``f"{path} is {describe(kind)}"``."""
    return KIND_MEANINGS.get(kind, KIND_MEANINGS["unknown"])


# ------------------------------------------------------------------------------------ reading


def read_keys(path: str | Path) -> dict[str, dict]:
    """{tensor name: {"dtype", "shape", "data_offsets"}} from the safetensors header alone."""
    path = Path(path)
    if _is_pickle(path):
        raise UserError(
            f"{path} is a pickle checkpoint; its tensor names cannot be read without unpickling it"
        )
    try:
        tensors, _, _ = read_safetensors_header(path)
    except (TypeError, AttributeError):  # a JSON header that is not an object
        tensors = None
    if not isinstance(tensors, dict) or not all(
        isinstance(v, dict) and "shape" in v and "dtype" in v for v in tensors.values()
    ):
        raise UserError(f"{path}: not a readable safetensors file (its header lists no tensors)")
    return tensors


def _is_pickle(path: Path) -> bool:
    """torch.save files are zip archives (``PK``) or bare pickles (protocol byte 0x80)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err})") from None
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def read_state_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint. A pickle file (.ckpt/.pt) is opened only with ``allow_pickle``,
    and then with ``weights_only=True``; Lightning's ``state_dict`` nesting is unwrapped."""
    path = Path(path)
    if not _is_pickle(path):
        from safetensors.torch import load_file

        read_keys(path)  # a clear error for a file that is neither
        return load_file(path)
    if not allow_pickle:
        raise UserError(
            f"{path} is a pickle checkpoint, which can run code when opened; convert it to .safetensors, "
            "or allow pickle files explicitly (model.allow_pickle=true)"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses anything that is not plain data
        raise UserError(f"{path}: not loadable as plain tensors ({str(err).splitlines()[0]})") from None
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds a {type(data).__name__}, not a dict of tensors")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


# ------------------------------------------------------------------------------- classifying


def _shapes(keys) -> dict[str, tuple[int, ...] | None]:
    """Names → shapes from a header dict, a state dict, or bare names (shape None)."""
    if isinstance(keys, Mapping):
        out = {}
        for name, value in keys.items():
            if isinstance(value, torch.Tensor):
                out[name] = tuple(value.shape)
            elif isinstance(value, Mapping) and "shape" in value:
                out[name] = tuple(value["shape"])
            else:
                out[name] = None
        return out
    return dict.fromkeys(keys)


def _has(names: Iterable[str], prefix: str) -> bool:
    return any(n.startswith(prefix) for n in names)


def _is_lora(names: Iterable[str]) -> bool:
    return any(n.startswith(_LORA_PREFIXES) or any(m in n for m in _LORA_MARKERS) for n in names)


def _unet_keys(shapes: dict) -> dict[str, tuple | None]:
    """The UNet's tensors, named without dots after ``diffusion_model`` (EMA keys have none)."""
    out = {}
    for name, shape in shapes.items():
        if name.startswith(UNET_PREFIX):
            out["diffusion_model" + name[len(UNET_PREFIX) :].replace(".", "")] = shape
        elif name.startswith(_EMA_UNET):
            out[name[len(EMA_PREFIX) :]] = shape
    return out


def unet_family(keys) -> str | None:
    """sd1 | sd2 | sdxl | sdxl_refiner judged from the UNet's tensors alone (original layout, EMA or
    not), or None when names without shapes cannot tell SD 1.x from SD 2.x."""
    unet = _unet_keys(_shapes(keys))
    if not unet:
        return None
    label_key = "diffusion_modellabel_emb00weight"  # SDXL's size embedding: 2816 wide, 2560 in the refiner
    if label_key in unet:
        label = unet[label_key]
        return "sdxl_refiner" if label and label[-1] == 2560 else "sdxl"
    context = [s[-1] for n, s in unet.items() if n.endswith("attn2to_kweight") and s]
    if context:
        return "sd2" if context[0] == 1024 else "sd1" if context[0] == 768 else _by_projection(unet)
    return _by_projection(unet)


def _by_projection(unet: dict) -> str | None:
    """SD 2.x projects in/out of attention with Linear layers, SD 1.x with 1×1 convolutions."""
    dims = {len(s) for n, s in unet.items() if n.endswith("proj_inweight") and s}
    return "sd2" if dims == {2} else "sd1" if dims == {4} else None


def classify_keys(keys) -> str:
    """What a checkpoint holds, from its tensor names (and shapes, when given as a header or state
    dict): one of :data:`KIND_MEANINGS`. fp16 and EMA-only files classify as their model."""
    shapes = _shapes(keys)
    names = list(shapes)
    if not names:
        return "unknown"
    has_unet = _has(names, UNET_PREFIX) or _has(names, _EMA_UNET)
    has_text = any(_has(names, p) for prefixes in TEXT_ENCODER_PREFIXES.values() for p in prefixes)
    if not has_unet and _is_lora(names):
        return "lora"
    if has_unet:
        if _has(names, _XL_OPEN_CLIP) and _has(names, _XL_CLIP):
            return "sdxl"
        if _has(names, _REFINER_OPEN_CLIP):
            return "sdxl_refiner"
        if _has(names, _SD2_OPEN_CLIP):
            return "sd2"
        if _has(names, _SD1_CLIP):
            return "sd1"
        return "unet_only"
    if has_text and not _has(names, VAE_PREFIX):
        return "text_encoder_only"
    if _is_vae(names):
        return "vae"
    if "input_blocks.0.0.weight" in shapes or ("conv_in.weight" in shapes and _has(names, "down_blocks.")):
        return "unet_only"  # a bare original-layout (ComfyUI) or diffusers-layout UNet
    if all(n.startswith("text_model.") or n == "text_projection.weight" for n in names):
        return "text_encoder_only"
    return "unknown"


def _is_vae(names: list[str]) -> bool:
    """A VAE alone: under first_stage_model. / vae., or bare encoder/decoder keys."""
    rest = [n for n in names if not n.startswith(("first_stage_model.", "vae.", "loss.", "model_ema."))]
    bare = {n.split(".", 1)[0] for n in rest}
    if rest and not bare <= {"encoder", "decoder", "quant_conv", "post_quant_conv"}:
        return False
    return any(".conv_in." in n or n.startswith(("encoder.", "decoder.")) for n in names)


def classify_file(path: str | Path) -> str:
    """:func:`classify_keys` of a safetensors file's header (nothing else is read)."""
    return classify_keys(read_keys(path))


# ------------------------------------------------------------------------------------ writing


def write_single_file(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``tensors`` as one safetensors file, atomically, with bytes that depend only on the
    tensors and metadata (names sorted, metadata sorted). Floating tensors are cast to ``dtype``
    if given. Streamed tensor by tensor: an SDXL checkpoint is never held twice in memory."""
    path = Path(path)
    names = sorted(tensors)
    header: dict = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise ValueError(f"safetensors metadata must map str to str: {bad[:3]}")
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset, prepared = 0, []
    for name in names:
        t = tensors[name].detach()
        target = dtype if dtype is not None and t.is_floating_point() else t.dtype
        if target not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: dtype {target} cannot be stored in safetensors")
        size = t.numel() * torch.empty((), dtype=target).element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[target],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        prepared.append((t, target))  # cast while streaming: never a second copy of the whole model
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    _atomic_stream(path, [len(text).to_bytes(8, "little"), text], prepared)
    return path


_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _atomic_stream(path: Path, head: list[bytes], tensors: list[tuple[torch.Tensor, torch.dtype]]) -> None:
    """The header, then each tensor cast as it is written, through sdexp.atomic's contract."""
    from sdexp.atomic import atomic_write_stream

    def write(f) -> None:
        for chunk in head:
            f.write(chunk)
        for t, target in tensors:
            if t.numel():
                t = t.to(device="cpu", dtype=target).contiguous().reshape(-1)
                f.write(t.view(torch.uint8).numpy().data)

    atomic_write_stream(path, write)


# ------------------------------------------------------------------------------------ loading


class _Source:
    """A checkpoint's tensors, read lazily by prefix (safetensors) or held (an unpickled file)."""

    def __init__(self, path: Path, allow_pickle: bool):
        self.path = path
        if _is_pickle(path):
            self._tensors = read_state_dict(path, allow_pickle)
            self.names = list(self._tensors)
        else:
            self._tensors = None
            self.names = list(read_keys(path))

    def select(self, predicate) -> dict[str, torch.Tensor]:
        names = [n for n in self.names if predicate(n)]
        if self._tensors is not None:
            return {n: self._tensors[n] for n in names}
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as f:
            return {n: f.get_tensor(n) for n in names}


def _component_class(config_dir: Path, name: str):
    """The class model_index.json names for component ``name`` (diffusers or transformers)."""
    index = json.loads((config_dir / "model_index.json").read_text())
    entry = index.get(name)
    if not entry or entry[0] is None:
        raise UserError(f"{config_dir}/model_index.json has no component {name!r}")
    library, class_name = entry
    return getattr(importlib.import_module(library), class_name)


def _ema_as_unet(ema: dict[str, torch.Tensor], cls, config_dir: Path) -> dict[str, torch.Tensor]:
    """LitEma's flattened keys (``model_ema.diffusion_modelinput_blocks00weight``) → the UNet's
    original keys, recovered from the keys the configured UNet has."""
    from sdexp.models.ldm_layout import unet_to_ldm

    config = cls.load_config(config_dir, subfolder="unet")
    with torch.device("meta"):
        names = unet_to_ldm(cls.from_config(config).state_dict(), dict(config))
    out, missing = {}, []
    for key in names:
        flat = _EMA_UNET + key.replace(".", "")
        if flat in ema:
            out[UNET_PREFIX + key] = ema[flat]
        else:
            missing.append(key)
    if missing:
        raise UserError(
            f"the EMA weights lack {len(missing)} UNet tensors (e.g. {missing[0]}); wrong config?"
        )
    return out


def _unet_tensors(source: _Source, cls, config_dir: Path, prefer_ema: bool) -> dict[str, torch.Tensor]:
    has_ema = any(n.startswith(_EMA_UNET) for n in source.names)
    has_plain = any(n.startswith(UNET_PREFIX) for n in source.names)
    if prefer_ema and not has_ema:
        raise UserError(f"{source.path} has no EMA weights (model_ema.*); load it without asking for EMA")
    if has_ema and (prefer_ema or not has_plain):
        return _ema_as_unet(source.select(lambda n: n.startswith(_EMA_UNET)), cls, config_dir)
    if not has_plain and "input_blocks.0.0.weight" in source.names:  # a bare original-layout UNet
        return {UNET_PREFIX + k: v for k, v in source.select(lambda n: True).items()}
    return source.select(lambda n: n.startswith(UNET_PREFIX))


def _vae_tensors(source: _Source) -> dict[str, torch.Tensor]:
    for prefix in (VAE_PREFIX, "vae."):
        if any(n.startswith(prefix) for n in source.names):
            return source.select(lambda n, p=prefix: n.startswith(p))
    if _is_vae(source.names):  # a VAE file: encoder.*, decoder.*, quant_conv.*
        return source.select(
            lambda n: n.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))
        )
    return {}


def _text_tensors(source: _Source, name: str) -> dict[str, torch.Tensor]:
    """Only this encoder's tensors: diffusers picks the CLIP branch by which keys exist, and two
    encoders of one width (tiny SDXL's) would otherwise be confused."""
    for prefix in TEXT_ENCODER_PREFIXES.get(name, ()):
        if any(n.startswith(prefix) for n in source.names):
            return source.select(lambda n, p=prefix: n.startswith(p))
    return {}


def _check_complete(name: str, module: torch.nn.Module, path: Path) -> None:
    """diffusers leaves a parameter it found no weight for on the meta device: refuse those."""
    missing = [n for n, p in [*module.named_parameters(), *module.named_buffers()] if p.is_meta]
    if missing:
        raise UserError(
            f"{path}: the {name} weights are incomplete ({len(missing)} missing, e.g. {missing[0]})"
        )


def load_components(
    path: str | Path,
    config_dir: str | Path,
    components: tuple[str, ...],
    dtype: torch.dtype = torch.float32,
    *,
    allow_pickle: bool = False,
    prefer_ema: bool = False,
) -> dict[str, torch.nn.Module]:
    """Load ``components`` (unet, vae, text_encoder, text_encoder_2) of a single file, offline,
    through diffusers' converters, with the configs of ``config_dir`` (a diffusers pipeline folder).

    The UNet comes from ``model.diffusion_model.*``; from the EMA copy (``model_ema.*``) when the
    file has nothing else or ``prefer_ema``. diffusers itself reads EMA only when a file holds
    both copies and ``extract_ema=True``; an EMA-only file would load no UNet at all.
    """
    from diffusers.loaders.single_file_utils import (
        SingleFileComponentError,
        create_diffusers_clip_model_from_ldm,
    )

    path, config_dir = Path(path), Path(config_dir)
    source = _Source(path, allow_pickle)
    out = {}
    for name in components:
        cls = _component_class(config_dir, name)
        options = {
            "config": str(config_dir),
            "subfolder": name,
            "local_files_only": True,
            "torch_dtype": dtype,
        }
        if name == "unet":
            tensors = _unet_tensors(source, cls, config_dir, prefer_ema)
        elif name == "vae":
            tensors = _vae_tensors(source)
        else:
            tensors = _text_tensors(source, name)
        if not tensors:
            raise UserError(f"{path} holds no {name} weights ({describe(classify_keys(source.names))})")
        try:
            if hasattr(cls, "from_single_file"):
                module = cls.from_single_file(tensors, **options)
            else:
                module = create_diffusers_clip_model_from_ldm(cls, tensors, **options)
        except (ValueError, KeyError, RuntimeError, SingleFileComponentError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(
                f"{path}: could not load its {name} with the configs of {config_dir}: {first}"
            ) from None
        del tensors
        _check_complete(name, module, path)
        out[name] = module.eval()
    return out
