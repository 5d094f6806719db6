"""LoHa and LoKr (peft) written as LyCORIS files, the format AUTOMATIC1111 and ComfyUI read, and read back.

A LyCORIS file uses the kohya module names the family gives (its UNet and text-encoder prefixes;
SDXL's UNet by its SGM names) with the algorithm's tensors under each name:

- LoHa: ``NAME.hada_w1_a`` (out, r), ``.hada_w1_b`` (r, in), ``.hada_w2_a``, ``.hada_w2_b``,
  ``.alpha``; ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) · alpha / r, reshaped to the layer's weight
  (a conv's ``in`` is in_channels × kh × kw). r is ``hada_w1_b``'s first dimension.
- LoKr: ``NAME.lokr_w1`` (a, b) or ``.lokr_w1_a`` @ ``.lokr_w1_b``; ``NAME.lokr_w2`` (c, d[, kh, kw])
  or ``.lokr_w2_a`` @ ``.lokr_w2_b``; ``.alpha``; ΔW = kron(w1, w2) · scale reshaped to the weight,
  where scale = alpha / r (r = the decomposed factor's inner dimension) when any factor is
  decomposed, and 1 when both are full. peft scales by alpha / r always, so when both factors are
  full its scale is baked into ``lokr_w1`` on export.

Beside it, ``peft/adapter_model.safetensors`` holds peft's own state dict per component
(``unet.…``, ``text_encoder.…``) with each component's adapter config in the metadata.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from sdexp.atomic import atomic_write_bytes
from sdexp.export.kohya import clean_module_name
from sdexp.export.lora_files import KOHYA_FILE, addnet_hash_bytes, canonical_safetensors, lora_metadata

ALGOS = ("loha", "lokr")
PEFT_DIR = "peft"
PEFT_FILE = "adapter_model.safetensors"
CONFIG_KEY = "sdexp.peft_configs"
LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
TUCKER_KEYS = ("hada_t1", "hada_t2", "lokr_t2")
TENSOR_KEYS = (*LOHA_KEYS, *LOKR_KEYS, *TUCKER_KEYS)


def algo_of_keys(keys) -> str | None:
    """loha | lokr from tensor names (``….hada_w1_a`` / ``….lokr_w1``), else None."""
    suffixes = {k.rsplit(".", 1)[-1] for k in keys}
    if suffixes & {*LOHA_KEYS, "hada_t1", "hada_t2"}:
        return "loha"
    if suffixes & {*LOKR_KEYS, "lokr_t2"}:
        return "lokr"
    return None


def rank_tensor(kind: str) -> bool:
    """Whether a tensor's first dimension is the rank (hada_w1_b, lokr_w1_b, lokr_w2_b)."""
    return kind in ("hada_w1_b", "lokr_w1_b", "lokr_w2_b")


def adapter_config(
    algo: str, *, rank: int, alpha: float, targets: list[str], factor: int = -1, decompose_both: bool = False
):
    """The peft config training injects: flattened (non-Tucker) convs, the layout LyCORIS files hold."""
    from peft import LoHaConfig, LoKrConfig

    if algo == "loha":
        return LoHaConfig(r=rank, alpha=alpha, target_modules=targets, use_effective_conv2d=False)
    if algo == "lokr":
        return LoKrConfig(
            r=rank,
            alpha=alpha,
            target_modules=targets,
            use_effective_conv2d=False,
            decompose_factor=factor,
            decompose_both=decompose_both,
        )
    raise ValueError(f"unknown LyCORIS algorithm {algo!r} (choose {', '.join(ALGOS)})")


# ---------------------------------------------------------------- peft layers → LyCORIS tensors


def lycoris_layers(model: nn.Module, adapter: str = "default") -> dict[str, tuple[str, dict, int, float]]:
    """{module name: (algo, {tensor name: tensor}, r, alpha)} of a model's LoHa/LoKr layers."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer

    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, LoHaLayer | LoKrLayer) and adapter in module.r:
            algo = "loha" if isinstance(module, LoHaLayer) else "lokr"
            tensors = {
                key: getattr(module, key)[adapter]
                for key in module.adapter_layer_names
                if adapter in getattr(module, key)
            }
            if tucker := set(tensors) & set(TUCKER_KEYS):
                raise ValueError(
                    f"{name}: Tucker-decomposed convs ({', '.join(sorted(tucker))}) are not exported"
                )
            layers[clean_module_name(name)] = (
                algo,
                tensors,
                int(module.r[adapter]),
                float(module.alpha[adapter]),
            )
    return layers


def to_lycoris_tensors(
    algo: str, tensors: dict[str, torch.Tensor], r: int, alpha: float
) -> dict[str, torch.Tensor]:
    """One module's peft tensors → its LyCORIS tensors (suffix → tensor), alpha included."""
    out = {k: t.detach().to("cpu", torch.float32).contiguous() for k, t in tensors.items()}
    if algo == "lokr" and "lokr_w1" in out and "lokr_w2" in out:
        # both factors full: readers apply no alpha, so peft's alpha / r goes into w1
        out["lokr_w1"] = out["lokr_w1"] * (alpha / r)
        alpha = float(r)
    out["alpha"] = torch.tensor(float(alpha))
    return out


def lycoris_state_dict(parts: Sequence[tuple[nn.Module, Callable[[str], str]]], adapter: str = "default"):
    """(kohya-named LyCORIS tensors, algo) of each (model, kohya namer) part."""
    out: dict[str, torch.Tensor] = {}
    algos = set()
    for model, namer in parts:
        for module, (algo, tensors, r, alpha) in sorted(lycoris_layers(model, adapter).items()):
            algos.add(algo)
            for kind, tensor in to_lycoris_tensors(algo, tensors, r, alpha).items():
                out[f"{namer(module)}.{kind}"] = tensor
    if len(algos) != 1:
        raise ValueError(f"expected one LyCORIS algorithm across the model, found {sorted(algos) or 'none'}")
    return out, algos.pop()


def _peft_state(model: nn.Module, adapter: str, component: str) -> dict[str, torch.Tensor]:
    """peft's state dict of one component, keys under ``component.``, float32 on the CPU."""
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(model, adapter_name=adapter)
    return {
        f"{component}.{clean_module_name(k)}": v.detach().to("cpu", torch.float32).contiguous()
        for k, v in sd.items()
    }


def save_lycoris(
    out_dir: str | Path,
    *,
    unet: nn.Module,
    unet_config,
    text_encoders: Sequence[tuple[nn.Module, object]] = (),
    family,
    prediction_type: str,
    rank: int,
    alpha: float,
    text_encoder_ranks: Sequence[int] = (),
    text_encoder_alphas: Sequence[float] = (),
    resolution,
    steps: int,
    title: str,
    targets: str,
    base_model: str,
    network_args: dict[str, str] | None = None,
    adapter_name: str = "default",
) -> dict[str, Path]:
    """Write ``out_dir/lora.safetensors`` (LyCORIS, kohya names) and ``out_dir/peft/adapter_model.safetensors``.

    ``unet_config`` and each text encoder's paired config are the peft configs they were injected
    with (saved so that sdexp rebuilds the same layers); names and metadata come from ``family``.
    """
    from safetensors.torch import save as st_save

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text_encoders = tuple(text_encoders)
    unet_cfg = dict(unet.config) if hasattr(unet, "config") else {}
    parts = [(unet, lambda m: family.kohya_unet_name(m, unet_cfg))]
    parts += [(enc, lambda m, i=i: family.kohya_te_name(i, m)) for i, (enc, _) in enumerate(text_encoders)]
    kohya_sd, algo = lycoris_state_dict(parts, adapter_name)
    metadata = lora_metadata(
        family=family,
        prediction_type=prediction_type,
        rank=rank,
        alpha=alpha,
        text_encoder_ranks=text_encoder_ranks,
        text_encoder_alphas=text_encoder_alphas,
        resolution=resolution,
        steps=steps,
        title=title,
        targets=targets,
        base_model=base_model,
    )
    args = json.loads(metadata.get("ss_network_args", "{}"))
    args.update({"algo": algo, **(network_args or {})})
    metadata.update(
        {
            "ss_network_module": "lycoris.kohya",
            "ss_network_args": json.dumps(args),
            "sdexp.adapter_type": algo,
        }
    )
    raw = st_save(kohya_sd)
    metadata["sshs_model_hash"] = addnet_hash_bytes(raw)
    paths = {"kohya": atomic_write_bytes(out_dir / KOHYA_FILE, canonical_safetensors(raw, metadata))}

    peft_sd, configs = {}, {}
    components = [("unet", unet, unet_config)]
    components += [
        (slot.attribute, enc, cfg) for slot, (enc, cfg) in zip(family.text_encoders, text_encoders)
    ]
    for component, model, config in components:
        peft_sd.update(_peft_state(model, adapter_name, component))
        configs[component] = _config_dict(config)
    provenance = {k: v for k, v in metadata.items() if k.startswith(("modelspec.", "sdexp."))}
    provenance[CONFIG_KEY] = json.dumps(configs, sort_keys=True)
    (out_dir / PEFT_DIR).mkdir(exist_ok=True)
    paths["peft"] = atomic_write_bytes(
        out_dir / PEFT_DIR / PEFT_FILE, canonical_safetensors(st_save(peft_sd), provenance)
    )
    return paths


def _config_dict(config) -> dict:
    """A peft config as plain JSON (enums as their values, target sets as sorted lists)."""
    d = config.to_dict()
    for key, value in d.items():
        if isinstance(value, set):
            d[key] = sorted(value)
        elif hasattr(value, "value"):
            d[key] = value.value
    return d


# ---------------------------------------------------------------- reading back into a pipeline


def _module_lookup(model: nn.Module, namer) -> dict[str, str]:
    """{kohya name: module name} for the model's own Linear/Conv layers (adapter internals excluded)."""
    lookup = {}
    for name, module in model.named_modules():
        parts = name.split(".")
        if not name or "base_layer" in parts or any(p.startswith(("lora_", "hada_", "lokr_")) for p in parts):
            continue
        if isinstance(module, nn.Linear | nn.Conv2d) or hasattr(module, "get_base_layer"):
            try:
                lookup[namer(name)] = clean_module_name(name)
            except (ValueError, KeyError):
                continue  # a module the family's kohya naming does not cover
    return lookup


def _group(state_dict: dict[str, torch.Tensor], what: str) -> dict[str, dict[str, torch.Tensor]]:
    """{module: {tensor kind: tensor}}; keys must be ``MODULE.KIND`` with a LyCORIS kind or alpha."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        module, _, kind = key.rpartition(".")
        if kind in TUCKER_KEYS:
            raise ValueError(f"{key}: Tucker-decomposed conv layers ({kind}) are not supported; {what}")
        if kind not in (*LOHA_KEYS, *LOKR_KEYS, "alpha"):
            raise ValueError(f"{key} is not a LoHa or LoKr tensor; {what}")
        modules.setdefault(module, {})[kind] = tensor
    return modules


def _scale(algo: str, tensors: dict[str, torch.Tensor]) -> tuple[int, float]:
    """(r, alpha) such that alpha / r is the scale ComfyUI and A1111 apply to this module."""
    if algo == "loha":
        missing = [k for k in LOHA_KEYS if k not in tensors]
        if missing:
            raise ValueError(f"LoHa module lacks {', '.join(missing)}")
        r = tensors["hada_w1_b"].shape[0]
    else:
        for n in ("1", "2"):
            if f"lokr_w{n}" not in tensors and not {f"lokr_w{n}_a", f"lokr_w{n}_b"} <= set(tensors):
                raise ValueError(f"LoKr module lacks lokr_w{n} (or lokr_w{n}_a and lokr_w{n}_b)")
        decomposed = [k for k in ("lokr_w2_b", "lokr_w1_b") if k in tensors]
        if not decomposed:
            return 1, 1.0  # both factors full: no scale
        r = tensors[decomposed[0]].shape[0]
    alpha = float(tensors["alpha"].item()) if "alpha" in tensors else float(r)
    return int(r), alpha


def _add_adapter(model: nn.Module, config, adapter: str) -> None:
    """Inject ``config`` as ``adapter`` where diffusers' set_adapters / unload / fuse find it."""
    if hasattr(model, "add_adapter") and hasattr(model, "set_adapters"):  # a diffusers model
        model.add_adapter(config, adapter_name=adapter)
        return
    # a transformers text encoder (its own add_adapter wants peft >= 0.22): peft's injection
    import warnings

    from peft import inject_adapter_in_model

    with warnings.catch_warnings():  # a second adapter is intended here, not an accident
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        inject_adapter_in_model(config, model, adapter_name=adapter)
    model.peft_config = {**(getattr(model, "peft_config", None) or {}), adapter: config}
    model._hf_peft_config_loaded = True


def _install(model: nn.Module, algo: str, modules: dict[str, dict[str, torch.Tensor]], adapter: str):
    """Inject peft layers of ``algo`` on exactly ``modules`` and give them the file's tensors and scales."""
    pattern = "^(?:" + "|".join(re.escape(m) for m in sorted(modules)) + ")$"
    _add_adapter(model, adapter_config(algo, rank=1, alpha=1.0, targets=pattern), adapter)
    for name, tensors in modules.items():
        layer = model.get_submodule(name)
        weight = layer.get_base_layer().weight
        for key in layer.adapter_layer_names:  # drop what injection made; the file says what exists
            if adapter in getattr(layer, key):
                del getattr(layer, key)[adapter]
        for kind, tensor in tensors.items():
            if kind != "alpha":
                getattr(layer, kind)[adapter] = nn.Parameter(
                    tensor.to(weight.device, weight.dtype), requires_grad=False
                )
        r, alpha = _scale(algo, tensors)
        layer.r[adapter], layer.alpha[adapter], layer.scaling[adapter] = r, alpha, alpha / r
        try:
            delta = layer.get_delta_weight(adapter)
        except RuntimeError as err:
            raise ValueError(
                f"{name}: tensor shapes do not fit the layer ({str(err).splitlines()[0]})"
            ) from None
        if delta.shape != weight.shape:
            raise ValueError(
                f"{name}: the delta's shape {tuple(delta.shape)} is not the layer's {tuple(weight.shape)}"
            )


def _components(pipe, family) -> list[tuple[str, nn.Module, object]]:
    """(attribute, model, kohya namer) of the UNet and each text encoder of the family."""
    unet_cfg = dict(pipe.unet.config)
    out = [("unet", pipe.unet, lambda m: family.kohya_unet_name(m, unet_cfg))]
    for i, slot in enumerate(family.text_encoders):
        out.append((slot.attribute, getattr(pipe, slot.attribute), lambda m, i=i: family.kohya_te_name(i, m)))
    return out


def load_lycoris(pipe, path: str | Path, adapter: str, family) -> int:
    """Load a LoHa/LoKr file (LyCORIS kohya names, or sdexp's peft file) into ``pipe`` as adapter
    ``adapter``, every module matched or a ValueError; returns how many modules it adapted."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        state_dict = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata() or {}
    algo = algo_of_keys(state_dict)
    if algo is None:
        raise ValueError("no LoHa (hada_w…) or LoKr (lokr_w…) tensors")
    components = _components(pipe, family)
    if CONFIG_KEY in metadata:
        return _load_peft(components, state_dict, json.loads(metadata[CONFIG_KEY]), adapter)
    per_component: dict[str, dict] = {}
    lookups = {attr: _module_lookup(model, namer) for attr, model, namer in components}
    for name, tensors in _group(state_dict, "only LoHa and LoKr files load").items():
        attr = next((a for a, lookup in lookups.items() if name in lookup), None)
        if attr is None:
            raise ValueError(f"module {name!r} matches no layer of the model (made for another base model?)")
        per_component.setdefault(attr, {})[lookups[attr][name]] = tensors
    count = 0
    for attr, model, _ in components:
        if attr in per_component:
            _install(model, algo, per_component[attr], adapter)
            count += len(per_component[attr])
    return count


def _load_peft(components, state_dict, configs: dict, adapter: str) -> int:
    """sdexp's own peft file: rebuild each component's layers from its saved config, load exactly."""
    from peft import PeftConfig, set_peft_model_state_dict

    count = 0
    for attr, model, _ in components:
        if attr not in configs:
            continue
        config = PeftConfig.from_peft_type(**configs[attr])
        sd = {k[len(attr) + 1 :]: v for k, v in state_dict.items() if k.startswith(attr + ".")}
        _add_adapter(model, config, adapter)
        result = set_peft_model_state_dict(model, sd, adapter_name=adapter)
        missing = [k for k in result.missing_keys if f".{adapter}" in k and any(t in k for t in TENSOR_KEYS)]
        if result.unexpected_keys or missing:
            raise ValueError(
                f"{attr}: {len(missing)} missing and {len(result.unexpected_keys)} unexpected tensors"
            )
        count += len({k.rpartition(".")[0] for k in sd})
    return count
