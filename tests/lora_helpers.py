"""Tiny LoRA models and files the way training makes them, for tests of export, inspect and loading."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model

from sdexp.export.lora_files import save_lora
from sdexp.models.loading import load_base
from sdexp.models.lora_targets import text_encoder_lora_targets, unet_lora_targets


def make_lora_model(
    targets: str,
    rank: int,
    alpha: float,
    te_rank: int | None = None,
    te_alpha: float | None = None,
    model: str = "tiny",
):
    """A tiny base with LoRA injected the way training injects it (every text encoder of the
    family when ``te_rank``), lora_B seeded nonzero."""
    base = load_base(model)
    torch.manual_seed(0)
    base.unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, target_modules=unet_lora_targets(base.unet, targets))
    )
    if te_rank:
        # transformers' text_encoder.add_adapter wants peft >= 0.22; peft's own injection is equivalent
        for encoder in base.text_encoders:
            config = LoraConfig(
                r=te_rank, lora_alpha=te_alpha, target_modules=text_encoder_lora_targets(encoder)
            )
            inject_adapter_in_model(config, encoder)
    g = torch.Generator().manual_seed(1)
    for module in base.modules:
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.data = torch.randn(p.shape, generator=g) * 0.1
    return base


def save(base, out_dir, targets, rank, alpha, te_rank=None, te_alpha=None, **kwargs):
    n = len(base.text_encoders) if te_rank else 0
    return save_lora(
        out_dir,
        unet=base.unet,
        text_encoders=base.text_encoders if te_rank else (),
        family=base.family,
        prediction_type=base.prediction_type,
        rank=rank,
        alpha=alpha,
        text_encoder_ranks=(te_rank,) * n,
        text_encoder_alphas=(te_alpha,) * n,
        resolution=64,
        steps=100,
        title="test-lora",
        targets=targets,
        base_model=base.name,
        **kwargs,
    )


def tiny_lora_file(out_dir: Path, model: str = "tiny", targets: str = "transformer") -> Path:
    """A kohya LoRA file (UNet and every text encoder) for a tiny model, lora_B nonzero."""
    lora = make_lora_model(targets, 4, 4.0, 2, 2.0, model=model)
    return save(lora, Path(out_dir), targets, 4, 4.0, 2, 2.0)["kohya"]
