"""diffusers names → the original (LDM / SGM) names of single-file checkpoints, driven by configs.

AUTOMATIC1111 and ComfyUI load one ``.safetensors`` in the layout of the original training code:
the UNet as ``input_blocks`` / ``middle_block`` / ``output_blocks``, the VAE as ``encoder.down.N``,
HF CLIP as is, OpenCLIP as ``transformer.resblocks.N`` with fused q/k/v. kohya's sd-scripts names
SDXL LoRA layers by the same UNet modules, so :func:`unet_module_to_ldm` is exact, not a guess.

Every block number is computed from the diffusers config (``layers_per_block``, block types,
``mid_block_type``), never from a known model, so tiny test models exercise the real numbering.
Only this direction lives here: diffusers' ``from_single_file`` reads the files back, and the tests
check these names against its converter.
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch

# ResnetBlock2D part → ResBlock part (UNet); the VAE's resnets keep their names except the shortcut.
_UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_FIXED = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's text_time embedding
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "class_embedding": "label_emb",  # num_class_embeds: an nn.Embedding
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_CONFIG_KEYS = ("down_block_types", "up_block_types", "layers_per_block", "mid_block_type")


def _per_block(value, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    if len(value) != n:
        raise ValueError(f"layers_per_block {value!r} does not match {n} blocks")
    return tuple(int(v) for v in value)


@lru_cache(maxsize=32)
def _unet_blocks(config_json: str) -> tuple[dict[str, str], frozenset[str]]:
    """({diffusers block path: original path}, the paths that are resnets) for one UNet config."""
    config = json.loads(config_json)
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    layers = _per_block(config["layers_per_block"], len(down))
    blocks, resnets = dict(_UNET_FIXED), set()

    def resnet(path: str, original: str) -> None:
        blocks[path] = original
        resnets.add(path)

    index = 1  # input_blocks.0 is conv_in
    for i, kind in enumerate(down):
        for j in range(layers[i]):
            resnet(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{index}.0")
            if "CrossAttn" in kind:
                blocks[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{index}.1"
            index += 1
        if i < len(down) - 1:
            blocks[f"down_blocks.{i}.downsamplers.0"] = f"input_blocks.{index}.0"
            blocks[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1

    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid is not None:  # resnet, attention, resnet → middle_block.0, .1, .2 (no attention: .0, .1)
        attention = "CrossAttn" in mid
        for k in range(2):
            resnet(f"mid_block.resnets.{k}", f"middle_block.{2 * k if attention else k}")
        if attention:
            blocks["mid_block.attentions.0"] = "middle_block.1"

    up_layers = tuple(reversed(layers))
    index = 0
    for i, kind in enumerate(up):
        attention = "CrossAttn" in kind
        for j in range(up_layers[i] + 1):
            resnet(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{index}.0")
            if attention:
                blocks[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{index}.1"
            if j == up_layers[i] and i < len(up) - 1:  # the upsampler follows the block's last layer
                blocks[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{index}.{2 if attention else 1}"
            index += 1
    return blocks, frozenset(resnets)


def _unet_key(unet_config: dict) -> str:
    missing = [k for k in _UNET_CONFIG_KEYS[:3] if k not in unet_config]
    if missing:
        raise ValueError(f"not a UNet2DConditionModel config: no {', '.join(missing)}")
    picked = {k: unet_config[k] for k in _UNET_CONFIG_KEYS if k in unet_config}
    return json.dumps(picked, sort_keys=True, default=list)


def unet_module_to_ldm(name: str, unet_config: dict) -> str:
    """A UNet2DConditionModel module path → its path in the original UNet
    (``down_blocks.1.attentions.0.proj_in`` → ``input_blocks.4.1.proj_in``)."""
    blocks, resnets = _unet_blocks(_unet_key(unet_config))
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head not in blocks:
            continue
        rest = parts[cut:]
        if head in resnets and rest:
            if rest[0] not in _UNET_RESNET_PARTS:
                break
            rest = [_UNET_RESNET_PARTS[rest[0]], *rest[1:]]
        return ".".join([blocks[head], *rest])
    raise ValueError(f"{name!r} is not a module of this UNet's original (LDM) layout")


def _split_param(key: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    if not module:
        raise ValueError(f"{key!r} is not a parameter name (module.leaf)")
    return module, leaf


def unet_to_ldm(state_dict: dict[str, torch.Tensor], unet_config: dict) -> dict[str, torch.Tensor]:
    """A diffusers UNet state dict → original keys (without ``model.diffusion_model.``); tensors shared."""
    out = {}
    for key, value in state_dict.items():
        module, leaf = _split_param(key)
        new = f"{unet_module_to_ldm(module, unet_config)}.{leaf}"
        if new in out:
            raise ValueError(f"{key!r} and another parameter both map to {new!r}")
        out[new] = value
    return out


# ------------------------------------------------------------------------------------------ VAE

_VAE_FIXED = {
    "conv_norm_out": "norm_out",
    "mid_block.attentions.0": "mid.attn_1",
    "mid_block.resnets.0": "mid.block_1",
    "mid_block.resnets.1": "mid.block_2",
}
_VAE_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_module(side: str, path: str, n_blocks: int) -> str:
    """A module path inside ``encoder`` / ``decoder`` → the original path inside it."""
    parts = path.split(".")
    for head, original in _VAE_FIXED.items():
        if path == head or path.startswith(head + "."):
            rest = path[len(head) + 1 :]
            if original == "mid.attn_1":
                if rest not in _VAE_ATTENTION_PARTS:
                    raise ValueError(f"{side}.{path}: unknown attention part")
                rest = _VAE_ATTENTION_PARTS[rest]
            path, parts = ".".join(filter(None, [original, rest])), []
            break
    if parts and parts[0] in ("down_blocks", "up_blocks") and len(parts) >= 4:
        i = int(parts[1])
        number = i if parts[0] == "down_blocks" else n_blocks - 1 - i  # decoder.up counts from the bottom
        name = "down" if parts[0] == "down_blocks" else "up"
        if parts[2] == "resnets":
            path = ".".join([name, str(number), "block", parts[3], *parts[4:]])
        elif parts[2] in ("downsamplers", "upsamplers") and parts[3] == "0":
            path = ".".join([name, str(number), "downsample" if name == "down" else "upsample", *parts[4:]])
        else:
            raise ValueError(f"{side}.{'.'.join(parts)}: unknown VAE block part")
    return path.replace("conv_shortcut", "nin_shortcut")


def vae_to_ldm(state_dict: dict[str, torch.Tensor], vae_config: dict) -> dict[str, torch.Tensor]:
    """An AutoencoderKL state dict → the original ``first_stage_model.`` keys (without the prefix);
    the mid-block attention's linear q/k/v/proj_out become the original 1×1 convolutions."""
    n_blocks = len(vae_config["up_block_types"])
    out = {}
    for key, value in state_dict.items():
        side, _, path = key.partition(".")
        if side in ("encoder", "decoder"):
            module, leaf = _split_param(path)
            new = f"{side}.{_vae_module(side, module, n_blocks)}.{leaf}"
            if ".mid.attn_1." in new and leaf == "weight" and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)
        elif side in ("quant_conv", "post_quant_conv"):
            new = key
        else:
            raise ValueError(f"{key!r} is not an AutoencoderKL parameter")
        if new in out:
            raise ValueError(f"{key!r} and another parameter both map to {new!r}")
        out[new] = value
    return out


# ---------------------------------------------------------------------------------- text encoders

_CLIP_INNER = ("embeddings.", "encoder.", "final_layer_norm.")


def clip_to_ldm(text_encoder_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An HF CLIP text encoder state dict → the keys SD 1.x (``cond_stage_model.transformer.``) and
    SDXL (``conditioner.embedders.0.transformer.``) hold: ``text_model.…``. transformers 5 saves
    CLIPTextModel without the ``text_model.`` level, older versions with it; both give the same."""
    out = {}
    for key, value in text_encoder_state_dict.items():
        new = f"text_model.{key}" if key.startswith(_CLIP_INNER) else key
        if new in out:
            raise ValueError(f"{key!r} appears twice (with and without text_model.)")
        out[new] = value
    return out


_OPEN_CLIP_LAYER_PARTS = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_OPEN_CLIP_FIXED = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}


def open_clip_to_ldm(
    text_encoder_state_dict: dict[str, torch.Tensor], text_config: dict, *, projection: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """An HF CLIP text encoder state dict → OpenCLIP's layout as SD 2.x (``cond_stage_model.model.``)
    and SDXL (``conditioner.embedders.1.model.``) hold it: q/k/v fused into ``in_proj``, and
    ``text_projection`` = the transposed ``projection`` (``text_projection.weight`` of a
    CLIPTextModelWithProjection; taken from the state dict when ``projection`` is None).

    Only the layers the encoder has are written: SD 2.x's diffusers encoder holds 23 of OpenCLIP-H's
    24 layers and no projection, and neither is synthesised. diffusers' loader needs neither (it
    splits in_proj by the config's width and skips layer 23 and the projection of SD 2 files), and
    SD 2.x inference never uses them: A1111 and ComfyUI run the penultimate layer, so layer 23 is
    skipped, and only SDXL reads the pooled projection. Those UIs load such a file with the two
    reported as missing keys.
    """
    sd = {k.removeprefix("text_model."): v for k, v in text_encoder_state_dict.items()}
    if projection is None:
        projection = sd.get("text_projection.weight")
    sd.pop("text_projection.weight", None)
    sd.pop("embeddings.position_ids", None)  # a buffer of older transformers; OpenCLIP has none
    out: dict[str, torch.Tensor] = {}
    layers = int(text_config["num_hidden_layers"])
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for leaf in ("weight", "bias"):
            try:
                qkv = [sd.pop(f"{p}self_attn.{x}_proj.{leaf}") for x in "qkv"]
            except KeyError as err:
                raise ValueError(f"text encoder state dict has no {err.args[0]!r}") from None
            out[f"transformer.resblocks.{i}.attn.in_proj_{leaf}"] = torch.cat(qkv, dim=0)
        for part, original in _OPEN_CLIP_LAYER_PARTS.items():
            for leaf in ("weight", "bias"):
                key = f"{p}{part}.{leaf}"
                if key not in sd:
                    raise ValueError(f"text encoder state dict has no {key!r}")
                out[f"transformer.resblocks.{i}.{original}.{leaf}"] = sd.pop(key)
    for key, original in _OPEN_CLIP_FIXED.items():
        if key not in sd:
            raise ValueError(f"text encoder state dict has no {key!r}")
        out[original] = sd.pop(key)
    if sd:
        raise ValueError(
            f"text encoder keys with no OpenCLIP name (config has {layers} layers): {sorted(sd)[:5]}"
        )
    if projection is not None:
        out["text_projection"] = projection.T.contiguous()
    return out
