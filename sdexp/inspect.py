"""What is in a LoRA file or a model folder, read from safetensors headers (fast even for big files).

Answers the questions people ask before loading: which format, which base, which rank and alpha,
which layers it adapts, how big each component is.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

from sdexp.errors import UserError

_DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


def _kohya_prefixes() -> tuple[str, ...]:
    from sdexp.export.kohya import TE_PREFIXES, UNET_PREFIX

    return tuple(f"{p}_" for p in (UNET_PREFIX, *TE_PREFIXES))


_CONV_BLOCKS = ("resnets", "downsamplers", "upsamplers")
_ATTN_LEAVES = ("to_q", "to_k", "to_v", "to_out_0")
_PEFT_KEY = re.compile(r"^(?P<module>.+?)\.lora_(?P<kind>[AB])(?:\.[^.]+)?\.weight$")
_PROCESSOR_KEY = re.compile(
    r"^(?P<module>.+?)(?:\.processor)?\.(?P<leaf>to_q|to_k|to_v|to_out)_lora\.(?P<kind>down|up)\.weight$"
)
_OLD_KEY = re.compile(r"^(?P<module>.+?)\.(?:lora|lora_linear_layer)\.(?P<kind>down|up)\.weight$")


def read_safetensors_header(path: str | Path) -> tuple[dict[str, dict], dict[str, str], int]:
    """(tensors {name: {dtype, shape, data_offsets}}, metadata, data start) without reading tensor data."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            (length,) = struct.unpack("<Q", raw)
            if length > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata, 8 + length


def _read_scalar(path: Path, info: dict, start: int) -> float | None:
    """A 0-d/1-element float tensor's value (kohya ``.alpha``), read straight from the file."""
    begin, end = info["data_offsets"]
    with open(path, "rb") as f:
        f.seek(start + begin)
        raw = f.read(end - begin)
    if info["dtype"] == "F32" and len(raw) == 4:
        return struct.unpack("<f", raw)[0]
    if info["dtype"] == "F16" and len(raw) == 2:
        return struct.unpack("<e", raw)[0]
    if info["dtype"] == "BF16" and len(raw) == 2:
        return struct.unpack("<f", b"\x00\x00" + raw)[0]
    if info["dtype"] == "F64" and len(raw) == 8:
        return struct.unpack("<d", raw)[0]
    return None


def lora_format(keys) -> str:
    """kohya | lycoris (LoHa/LoKr, kohya names) | diffusers | peft (sdexp's LoHa/LoKr) | unknown,
    from tensor names alone."""
    from sdexp.export.lycoris import algo_of_keys

    keys = list(keys)
    if keys and all(k.startswith(_kohya_prefixes()) for k in keys):
        return "lycoris" if algo_of_keys(keys) else "kohya"
    components = ("unet.", "text_encoder.", "text_encoder_2.")
    if keys and algo_of_keys(keys) and all(k.startswith(components) for k in keys):
        return "peft"
    if keys and all(
        k.startswith(("unet.", "text_encoder.", "text_encoder_2.")) and "lora" in k for k in keys
    ):
        return "diffusers"
    return "unknown"


def infer_targets(unet_modules: list[str]) -> str | None:
    """attn | transformer | all | custom, from UNet module names (dotted or underscored)."""
    names = [m.replace(".", "_") for m in unet_modules]
    if not names:
        return None
    if any(f"_{b}_" in f"_{n}_" for n in names for b in _CONV_BLOCKS):
        return "all"
    if any(n.endswith(("_proj_in", "_proj_out")) or "_ff_net_" in n for n in names):
        return "transformer"
    if all(n.endswith(_ATTN_LEAVES) for n in names):
        return "attn"
    return "custom"


def _diffusers_module(rest: str) -> tuple[str | None, str | None]:
    """A diffusers LoRA key (peft, attention-processor or old layout) → (module name, down | up)."""
    if match := _PEFT_KEY.match(rest):
        return match["module"], "down" if match["kind"] == "A" else "up"
    if match := _PROCESSOR_KEY.match(rest):
        leaf = "to_out.0" if match["leaf"] == "to_out" else match["leaf"]
        return f"{match['module']}.{leaf}", match["kind"]
    if match := _OLD_KEY.match(rest):
        return match["module"], match["kind"]
    return None, None


def _kohya_part(name: str) -> str:
    """The component a kohya module name belongs to: unet, or the family's text encoder attribute."""
    from sdexp.models.families import FAMILIES

    if name.startswith("lora_unet_"):
        return "unet"
    slots = sorted(
        (slot for f in FAMILIES.values() for slot in f.text_encoders),
        key=lambda slot: -len(slot.kohya_prefix),
    )
    return next(
        (slot.attribute for slot in slots if name.startswith(slot.kohya_prefix + "_")), "text_encoder"
    )


def _split_modules(fmt: str, tensors: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """{"unet"|"text_encoder"|"text_encoder_2": {module: {"down": info, "up": info, "alpha": info}}}."""
    parts: dict[str, dict[str, dict]] = {}
    for key, info in tensors.items():
        if fmt in ("lycoris", "peft"):
            from sdexp.export.lycoris import rank_tensor

            module, _, kind = key.rpartition(".")
            part, name = (_kohya_part(module), module) if fmt == "lycoris" else module.split(".", 1)
            kind = "alpha" if kind == "alpha" else "down" if rank_tensor(kind) else "tensor"
        elif fmt == "kohya":
            name, _, kind = key.partition(".")
            part = _kohya_part(name)
            kind = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}.get(kind)
        else:
            part, _, rest = key.partition(".")
            name, kind = _diffusers_module(rest)
        if kind:
            parts.setdefault(part, {}).setdefault(name, {})[kind] = info
    return parts


def inspect_lora(path: str | Path) -> dict:
    """Format, family, ranks, alphas, targets and module counts of a LoRA .safetensors file."""
    path = Path(path)
    tensors, metadata, start = read_safetensors_header(path)
    fmt = lora_format(tensors)
    parts = _split_modules(fmt, tensors) if fmt != "unknown" else {}
    adapter_meta = {}
    if "lora_adapter_metadata" in metadata:
        try:
            adapter_meta = json.loads(metadata["lora_adapter_metadata"])
        except json.JSONDecodeError:
            adapter_meta = {}
    ranks, alphas, modules = {}, {}, {}
    for part, mods in parts.items():
        modules[part] = len(mods)
        ranks[part] = sorted({m["down"]["shape"][0] for m in mods.values() if "down" in m})
        if fmt in ("kohya", "lycoris"):
            values = {_read_scalar(path, m["alpha"], start) for m in mods.values() if "alpha" in m}
            alphas[part] = sorted(v for v in values if v is not None) or ranks[part]  # no alpha: alpha = rank
        else:
            alpha = adapter_meta.get(f"{part}.lora_alpha")
            alphas[part] = [float(alpha)] if alpha is not None else [float(r) for r in ranks[part]]
    from sdexp.models.families import lora_family

    unet = parts.get("unet", {})
    context = {
        m["down"]["shape"][1]
        for n, m in unet.items()
        if n.replace(".", "_").endswith("attn2_to_k") and "down" in m
    }
    family = lora_family(metadata, set(parts) - {"unet"}, next(iter(context)) if len(context) == 1 else None)
    conv = sum(
        1
        for m in unet.values()
        if len(m.get("down", {}).get("shape", ())) == 4 and m["down"]["shape"][2:] != [1, 1]
    )
    dtypes = sorted({info["dtype"] for info in tensors.values()})
    return {
        "kind": "lora",
        "path": str(path),
        "format": fmt,
        "family": family,
        "architecture": metadata.get("modelspec.architecture"),
        "targets": metadata.get("sdexp.targets") or infer_targets(list(unet)),
        "ranks": ranks,
        "alphas": alphas,
        "modules": modules,
        "conv_modules": conv,
        "tensors": len(tensors),
        "dtypes": dtypes,
        "size_bytes": path.stat().st_size,
        "metadata": dict(sorted(metadata.items())),
    }


def _component_weights(folder: Path) -> dict:
    """Parameter count, dtypes and size of a component's safetensors weights (all shards)."""
    files = sorted(p for p in folder.glob("*.safetensors"))
    plain = [p for p in files if p.name.count(".") == 1]
    files = plain or files
    params, dtypes, size = 0, set(), 0
    for file in files:
        tensors, _, _ = read_safetensors_header(file)
        size += file.stat().st_size
        for info in tensors.values():
            params += math.prod(info["shape"])
            dtypes.add(info["dtype"])
    return {"params": params, "dtypes": sorted(dtypes), "size_bytes": size, "files": [p.name for p in files]}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def inspect_model_dir(path: str | Path) -> dict:
    """Components, parameter counts, family, prediction type and variant of a diffusers model folder."""
    from sdexp.models.families import folder_family
    from sdexp.models.loading import detect_variant, resolve_model

    model_dir = resolve_model(path, key="PATH")
    if model_dir.is_file():
        return inspect_checkpoint_file(model_dir)
    index = _read_json(model_dir / "model_index.json")
    components = {}
    for name, value in sorted(index.items()):
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        entry = {"library": value[0], "class": value[1]}
        if (model_dir / name).is_dir() and any((model_dir / name).glob("*.safetensors")):
            entry.update(_component_weights(model_dir / name))
        components[name] = entry
    family = folder_family(model_dir)
    return {
        "kind": "model",
        "path": str(model_dir),
        "family": family.name if family else None,
        "format": "diffusers",
        "prediction_type": _read_json(model_dir / "scheduler" / "scheduler_config.json").get(
            "prediction_type", "epsilon"
        ),
        "variant": detect_variant(model_dir),
        "resolution": _resolution(model_dir),
        "components": components,
        "params": sum(c.get("params", 0) for c in components.values()),
    }


def _resolution(config_dir: Path) -> int | None:
    unet_cfg = _read_json(config_dir / "unet" / "config.json")
    vae_cfg = _read_json(config_dir / "vae" / "config.json")
    scale = 2 ** (len(vae_cfg.get("block_out_channels", [0] * 4)) - 1)
    return unet_cfg.get("sample_size", 0) * scale or None


def inspect_checkpoint_file(path: Path) -> dict:
    """A single-file (original layout) base model: family, prediction type, parts and their sizes."""
    from sdexp.models.checkpoint_file import (
        checkpoint_parts,
        file_config_dir,
        file_family,
        file_prediction_type,
    )

    family = file_family(path)
    tensors, metadata, _ = read_safetensors_header(path)
    prediction = file_prediction_type(path, family)
    components = {}
    for name, keys in checkpoint_parts(family, tensors).items():
        infos = [tensors[k] for k in keys]
        components[name] = {
            "library": "original",
            "class": name,
            "params": sum(math.prod(i["shape"]) for i in infos),
            "dtypes": sorted({i["dtype"] for i in infos}),
            "size_bytes": sum(i["data_offsets"][1] - i["data_offsets"][0] for i in infos),
        }
    return {
        "kind": "model",
        "path": str(path),
        "family": family.name,
        "format": "single-file",
        "prediction_type": prediction,
        "variant": None,
        "resolution": _resolution(file_config_dir(path, family, prediction)),
        "components": components,
        "params": sum(c["params"] for c in components.values()),
        "metadata": {k: v for k, v in sorted(metadata.items()) if not k.startswith("sdexp.diffusers")},
    }


def find_lora_file(path: Path) -> Path | None:
    """The LoRA file a path names: the file itself, or a run checkpoint / diffusers LoRA folder's file."""
    if path.is_file():
        return path
    for candidate in (
        "lora.safetensors",
        "pytorch_lora_weights.safetensors",
        "diffusers/pytorch_lora_weights.safetensors",
    ):
        if (path / candidate).is_file():
            return path / candidate
    return None


def inspect_path(path: str | Path) -> dict:
    """Inspect a LoRA file (or a folder holding one) or a diffusers model folder (or a built-in name)."""
    from sdexp.config import BUILTIN_MODELS

    if str(path) in BUILTIN_MODELS:
        return inspect_model_dir(path)
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"PATH: {path} does not exist")
    if path.is_dir() and (path / "model_index.json").exists():
        return inspect_model_dir(path)
    if path.is_file() and path.suffix == ".safetensors":
        from sdexp.models.checkpoint_file import is_base_checkpoint

        if is_base_checkpoint(path):
            return inspect_checkpoint_file(path)
    lora = find_lora_file(path)
    if lora is None:
        raise UserError(f"PATH: {path} holds neither a model (model_index.json) nor a LoRA .safetensors file")
    if lora.suffix != ".safetensors":
        raise UserError(
            f"PATH: {lora} is not a .safetensors file; pickle files are not opened (they can run code)"
        )
    return inspect_lora(lora)


def _fmt_count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _fmt_list(values) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) or "-"


def print_report(info: dict, console=None) -> None:
    """Print an inspect result as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    summary = Table(title=info["path"], show_header=False, title_justify="left")
    summary.add_column(style="bold cyan")
    summary.add_column()
    if info["kind"] == "lora":
        rows = [
            ("kind", "LoRA"),
            ("format", info["format"]),
            ("family", info["family"] or "unknown"),
            ("architecture", info["architecture"] or "-"),
            ("targets", info["targets"] or "-"),
        ]
        for part in info["modules"]:
            rows.append(
                (
                    part,
                    f"{info['modules'][part]} modules, rank {_fmt_list(info['ranks'][part])}, "
                    f"alpha {_fmt_list(info['alphas'][part])}",
                )
            )
        rows += [
            ("conv modules", str(info["conv_modules"])),
            ("tensors", f"{info['tensors']} ({_fmt_list(info['dtypes'])})"),
            ("size", f"{info['size_bytes'] / 1e6:.2f} MB"),
        ]
    else:
        rows = [
            ("kind", "model"),
            ("format", info.get("format", "diffusers")),
            ("family", info["family"] or "unknown"),
            ("prediction type", info["prediction_type"]),
            ("variant", info["variant"] or "-"),
            ("resolution", str(info["resolution"] or "-")),
            ("parameters", _fmt_count(info["params"])),
        ]
    for key, value in rows:
        summary.add_row(key, value)
    console.print(summary)
    if info["kind"] == "model":
        table = Table(title="components", title_justify="left")
        for col in ("name", "class", "parameters", "dtype", "size"):
            table.add_column(col)
        for name, c in info["components"].items():
            size = f"{c['size_bytes'] / 1e6:.1f} MB" if "size_bytes" in c else "-"
            params = _fmt_count(c["params"]) if "params" in c else "-"
            table.add_row(name, f"{c['library']}.{c['class']}", params, _fmt_list(c.get("dtypes", [])), size)
        console.print(table)
    elif info["metadata"]:
        table = Table(title="metadata", title_justify="left")
        table.add_column("key", style="cyan")
        table.add_column("value", overflow="fold")
        for key, value in info["metadata"].items():
            table.add_row(key, value if len(value) <= 300 else value[:300] + " …")
        console.print(table)
