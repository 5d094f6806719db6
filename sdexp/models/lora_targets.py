"""Which modules LoRA wraps, chosen the way kohya's sd-scripts chooses them.

`attn`: to_q/to_k/to_v/to_out.0 of every attention in the transformer blocks (diffusers scripts).
`transformer`: every Linear and 1x1 Conv2d inside Transformer2DModel (kohya's default; 192
modules on SD 1.5). `all`: plus every Linear/Conv2d in ResNet, down- and up-sampler blocks
(LoCon). Text encoder: every Linear in CLIP's attention and MLP blocks (72 on ViT-L).
"""

from __future__ import annotations

from torch import nn

TRANSFORMER_CLASSES = ("Transformer2DModel",)
CONV_BLOCK_CLASSES = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_CLASSES = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")
ATTENTION_LEAVES = ("to_q", "to_k", "to_v", "to_out.0")


def _is_linear_or_pointwise(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)


def _children_of(model: nn.Module, classes: tuple[str, ...], accept) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for parent_name, parent in model.named_modules():
        if type(parent).__name__ not in classes:
            continue
        for child_name, child in parent.named_modules():
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if child_name and accept(child_name, child) and full not in seen:
                seen.add(full)
                names.append(full)
    return names


def unet_lora_targets(unet: nn.Module, targets: str) -> list[str]:
    """Full module names in ``unet`` for ``targets`` = attn | transformer | all."""
    if targets == "attn":
        return _children_of(
            unet,
            TRANSFORMER_CLASSES,
            lambda name, m: (
                isinstance(m, nn.Linear)
                and name.endswith(ATTENTION_LEAVES)
                and (".attn1." in f".{name}" or ".attn2." in f".{name}")
            ),
        )
    names = _children_of(unet, TRANSFORMER_CLASSES, lambda _n, m: _is_linear_or_pointwise(m))
    if targets == "transformer":
        return names
    if targets == "all":
        return names + _children_of(
            unet, CONV_BLOCK_CLASSES, lambda _n, m: isinstance(m, (nn.Linear, nn.Conv2d))
        )
    raise ValueError(f"unknown LoRA targets {targets!r}")


def text_encoder_lora_targets(text_encoder: nn.Module) -> list[str]:
    """Full module names of every Linear in the text encoder's attention and MLP blocks."""
    return _children_of(text_encoder, TEXT_ENCODER_CLASSES, lambda _n, m: isinstance(m, nn.Linear))
