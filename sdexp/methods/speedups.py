"""Faster steps that do not change what is trained: ``train.compile`` and ``train.channels_last``.

Compilation is regional: each repeated block of the UNet (diffusers' ``_repeated_blocks``, the
transformer blocks) is compiled with ``Module.compile``, not the whole
UNet. Blocks of one shape share a graph, so compile time is a few graphs rather than one graph of
the whole network, and what lives between the blocks stays eager Python: peft's LoRA/DoRA/LoHa/
LoKr layers are traced inside the blocks that hold them, gradient checkpointing calls the compiled
blocks inside ``torch.utils.checkpoint``, and a sweep's base pool undoes it by clearing each
block's ``_compiled_call_impl``. The per-sample loss is compiled too (a handful of fused kernels).
"""

from __future__ import annotations

import os
import shutil

import torch

from sdexp.errors import ConfigError

# Besides the model's own ``_repeated_blocks``. Not ResnetBlock2D: its many channel widths each
# need a graph (parameter shapes are guards) and hit dynamo's recompile limit even on ``tiny``.
COMPILED_BLOCKS: tuple[str, ...] = ()


def check_compile(enabled: bool, device: torch.device | str) -> None:
    """Refuse ``train.compile`` where torch.compile cannot build kernels, before a model loads."""
    if not enabled:
        return
    from torch._dynamo import is_dynamo_supported

    if not is_dynamo_supported():
        raise ConfigError(
            "train.compile: torch.compile does not support this Python; set train.compile=false"
        )
    if torch.device(device).type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ConfigError(
                "train.compile: needs triton on CUDA (`pip install triton`); set train.compile=false"
            )
    elif not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
        raise ConfigError(
            "train.compile: needs a C++ compiler on the CPU (g++ or clang++); set train.compile=false"
        )


def compile_blocks(unet: torch.nn.Module) -> int:
    """Compile every repeated block of ``unet`` in place; returns how many were compiled."""
    names = {*getattr(unet, "_repeated_blocks", ()), *COMPILED_BLOCKS}
    blocks = [m for m in unet.modules() if type(m).__name__ in names]
    if not blocks:
        raise ConfigError(
            f"train.compile: {type(unet).__name__} has none of the blocks sdexp compiles ({', '.join(sorted(names))})"
        )
    for block in blocks:
        block._compiled_call_impl = _training_only(torch.compile(block._call_impl), block._call_impl)
    return len(blocks)


def _training_only(compiled, eager):
    """Compiled where gradients flow (the training step), eager under no_grad (validation,
    evaluation, samples): those would each need graphs of their own (grad mode and CFG's doubled
    batch are guards), minutes of compiling for calls that are a small share of a run."""

    def call(*args, **kwargs):
        return (compiled if torch.is_grad_enabled() else eager)(*args, **kwargs)

    return call


def set_memory_format(modules, channels_last: bool) -> None:
    """4-D weights in channels_last, or back to contiguous (a pooled base may come from a trial
    that asked for channels_last; the next one must compute as a freshly loaded base does)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for module in modules:
        if channels_last or any(p.dim() == 4 and not p.is_contiguous() for p in module.parameters()):
            module.to(memory_format=fmt)


def as_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An image-shaped input in the format its convolutions' weights are in."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
