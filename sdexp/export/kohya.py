"""peft module names and LoRA tensors ↔ kohya sd-scripts names (what A1111/ComfyUI load).

kohya names a module by its full name with dots turned into underscores, under a prefix for the
UNet and one per text encoder; which prefixes and which UNet naming (diffusers' paths, or SDXL's
original SGM modules) is the model family's business (``sdexp.models.families``), passed in here.
kohya's text encoder names carry transformers 4's ``text_model.`` prefix, which transformers 5's
CLIP text model no longer has, so it is added on export and removed on import, explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from sdexp.models.families import kohya_text_encoder_prefixes

UNET_PREFIX = "lora_unet"
TE_PREFIXES = kohya_text_encoder_prefixes()  # every family's, longest first
TEXT_MODEL = "text_model."

# Multi-word names in SD UNet / CLIP module paths, used to undo "." → "_" without a model at hand.
_COMPOUNDS = (
    "down_blocks",
    "up_blocks",
    "mid_block",
    "transformer_blocks",
    "to_q",
    "to_k",
    "to_v",
    "to_out",
    "proj_in",
    "proj_out",
    "conv_shortcut",
    "time_emb_proj",
    "conv_in",
    "conv_out",
    "time_embedding",
    "linear_1",
    "linear_2",
    "add_embedding",
    "text_model",
    "self_attn",
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "text_projection",
    "final_layer_norm",
    "layer_norm1",
    "layer_norm2",
)
_PEFT_KEY = re.compile(
    r"^(?P<module>.+)\.(?:lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight|(?P<magnitude>lora_magnitude_vector))$"
)
_KOHYA_KEY = re.compile(r"^(?P<name>[^.]+)\.(?P<kind>lora_down\.weight|lora_up\.weight|alpha|dora_scale)$")


def clean_module_name(module_name: str) -> str:
    """Drop wrappers' prefixes (torch.compile's ``_orig_mod.``, DDP's ``module.``) from a name."""
    for prefix in ("_orig_mod.", "module."):
        while module_name.startswith(prefix):
            module_name = module_name[len(prefix) :]
    return module_name


def kohya_unet_name(module_name: str) -> str:
    """``down_blocks.0.attentions.0.proj_in`` → ``lora_unet_down_blocks_0_attentions_0_proj_in``."""
    return f"{UNET_PREFIX}_" + clean_module_name(module_name).replace(".", "_")


def kohya_te_name(module_name: str, prefix: str) -> str:
    """A CLIP module name (with or without ``text_model.``) → ``PREFIX_text_model_…`` (the prefix
    is the family's for that encoder)."""
    name = clean_module_name(module_name)
    if not name.startswith(TEXT_MODEL):
        name = TEXT_MODEL + name
    return f"{prefix}_" + name.replace(".", "_")


def _guess_dotted(underscored: str) -> str:
    """Undo ``.`` → ``_`` for SD/CLIP module names (the same guesswork diffusers does)."""
    tokens = underscored.split("_")
    out: list[str] = []
    i = 0
    while i < len(tokens):
        for width in (3, 2):
            joined = "_".join(tokens[i : i + width])
            if i + width <= len(tokens) and joined in _COMPOUNDS:
                out.append(joined)
                i += width
                break
        else:
            out.append(tokens[i])
            i += 1
    return ".".join(out)


def _split_peft(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """peft keys → {module: {"A": tensor, "B": tensor[, "M": DoRA magnitude]}}; anything else is an error."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = _PEFT_KEY.match(key)
        if not match:
            raise ValueError(
                f"not a LoRA or DoRA weight: {key!r} (biases and other adapters are unsupported)"
            )
        modules.setdefault(clean_module_name(match["module"]), {})[
            "M" if match["magnitude"] else match["ab"]
        ] = tensor
    for module, pair in modules.items():
        if not {"A", "B"} <= set(pair):
            raise ValueError(f"LoRA module {module!r} lacks lora_A or lora_B")
    return modules


def _alpha_of(alpha: float | Mapping[str, float], module: str) -> float:
    if isinstance(alpha, Mapping):
        return float(alpha[module])
    return float(alpha)


def to_kohya_state_dict(
    unet_sd: Mapping[str, torch.Tensor],
    text_encoders: Mapping[str, tuple[Mapping[str, torch.Tensor], float | Mapping[str, float]]] | None = None,
    *,
    unet_alpha: float | Mapping[str, float],
    unet_namer: Callable[[str], str] = kohya_unet_name,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """peft state dicts (``….lora_A.weight``) → kohya ``NAME.lora_down/lora_up.weight`` + ``NAME.alpha``.

    ``text_encoders`` maps each encoder's kohya prefix (the family's: one per text encoder) to its
    (state dict, alpha); ``unet_namer`` is the family's UNet naming (SDXL's
    follows the original SGM modules). Alphas are the real ones (scale = alpha / rank); a mapping
    gives one per module name. A DoRA magnitude (peft's ``lora_magnitude_vector``, one norm per
    output row) becomes ``NAME.dora_scale`` shaped ``(out, 1, ...)`` like the layer's weight: the
    output-axis layout that ComfyUI and LyCORIS read and that diffusers' kohya converter maps back.
    """
    out: dict[str, torch.Tensor] = {}
    parts = [(unet_sd, unet_alpha, unet_namer)]
    for prefix, (sd, alpha) in (text_encoders or {}).items():
        if sd:
            parts.append((sd, alpha, lambda m, p=prefix: kohya_te_name(m, p)))
    for sd, alpha, namer in parts:
        for module, pair in sorted(_split_peft(sd).items()):
            name = namer(module)
            down, up = (t.detach().to("cpu") for t in (pair["A"], pair["B"]))
            if dtype is not None:
                down, up = down.to(dtype), up.to(dtype)
            out[f"{name}.lora_down.weight"] = down.contiguous()
            out[f"{name}.lora_up.weight"] = up.contiguous()
            out[f"{name}.alpha"] = torch.tensor(_alpha_of(alpha, module), dtype=dtype or down.dtype)
            if "M" in pair:
                magnitude = pair["M"].detach().to("cpu", dtype or down.dtype)
                out[f"{name}.dora_scale"] = magnitude.reshape(-1, *[1] * (down.dim() - 1)).contiguous()
    return out


@dataclass
class PeftLora:
    """A kohya file read back as peft state dicts and per-module alphas (diffusers module names)."""

    unet: dict[str, torch.Tensor] = field(default_factory=dict)
    text_encoders: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # kohya prefix → sd
    unet_alphas: dict[str, float] = field(default_factory=dict)
    te_alphas: dict[str, dict[str, float]] = field(default_factory=dict)


def _lookup(names: Iterable[str] | None, namer) -> dict[str, str]:
    return {namer(n): clean_module_name(n) for n in names} if names is not None else {}


def from_kohya_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    unet_modules: Iterable[str] | None = None,
    te_modules: Iterable[str] | Mapping[str, Iterable[str]] | None = None,
    unet_namer: Callable[[str], str] = kohya_unet_name,
    keep_text_model_prefix: bool = False,
) -> PeftLora:
    """kohya tensors → :class:`PeftLora` (peft keys ``….lora_A.weight``), the inverse of ``to_kohya_state_dict``.

    With ``unet_modules``/``te_modules`` (a model's module names; per kohya prefix for several
    encoders) and the family's ``unet_namer``, names map exactly; without, they are reconstructed
    from the SD 1.x/2.x and CLIP vocabulary. Text-encoder names lose ``text_model.`` unless kept.
    """
    unet_lookup = _lookup(unet_modules, unet_namer)
    per_prefix = te_modules if isinstance(te_modules, Mapping) else {p: te_modules for p in TE_PREFIXES}
    te_lookups = {p: _lookup(per_prefix.get(p), lambda m, p=p: kohya_te_name(m, p)) for p in TE_PREFIXES}
    result = PeftLora()
    for key, tensor in state_dict.items():
        match = _KOHYA_KEY.match(key)
        if not match:
            raise ValueError(f"not a kohya LoRA key: {key!r}")
        name, kind = match["name"], match["kind"]
        prefix = next((p for p in (UNET_PREFIX, *TE_PREFIXES) if name.startswith(p + "_")), None)
        if prefix is None:
            raise ValueError(
                f"kohya key {key!r} has no UNet or text-encoder prefix ({UNET_PREFIX}, {', '.join(TE_PREFIXES)})"
            )
        lookup = unet_lookup if prefix == UNET_PREFIX else te_lookups[prefix]
        if lookup:
            if name not in lookup:
                raise ValueError(f"kohya module {name!r} matches no module of the model")
            module = lookup[name]
        else:
            module = _guess_dotted(name[len(prefix) + 1 :])
        if prefix != UNET_PREFIX:
            module = module.removeprefix(TEXT_MODEL)
            module = TEXT_MODEL + module if keep_text_model_prefix else module
        if kind == "dora_scale":
            sd = result.unet if prefix == UNET_PREFIX else result.text_encoders.setdefault(prefix, {})
            # peft keeps a Linear's magnitude as (out,) and a conv's as (1, out, 1, 1)
            shape = (1, -1, *[1] * (tensor.dim() - 2)) if tensor.dim() > 2 else (-1,)
            sd[f"{module}.lora_magnitude_vector"] = tensor.reshape(shape)
            continue
        if kind == "alpha":
            target = result.unet_alphas if prefix == UNET_PREFIX else result.te_alphas.setdefault(prefix, {})
            target[module] = float(tensor.item())
            continue
        sd = result.unet if prefix == UNET_PREFIX else result.text_encoders.setdefault(prefix, {})
        sd[f"{module}.lora_{'A' if kind == 'lora_down.weight' else 'B'}.weight"] = tensor
    return result
