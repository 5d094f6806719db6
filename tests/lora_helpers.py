"""Tiny LoRA models and files the way training makes them, for tests of export, inspect and loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def pipeline_image(pipe, prompt: str = "a red square", *, seed: int = 0, **kwargs) -> np.ndarray:
    """One 64 px image in 3 sampler steps from a fixed seed: what the file tests compare."""
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt,
        num_inference_steps=3,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **kwargs,
    )
    return out.images[0]


def file_test_image(pipe, **kwargs) -> np.ndarray:
    """The LoRA/LyCORIS file tests' image: "a red square" at guidance 5."""
    return pipeline_image(pipe, guidance_scale=5.0, **kwargs)


_BASE_IMAGES: dict[str, np.ndarray] = {}


def base_image_of(model: str) -> np.ndarray:
    """``file_test_image`` of a built-in base, made once per test process."""
    if model not in _BASE_IMAGES:
        _BASE_IMAGES[model] = file_test_image(load_base(model).pipeline())
    return _BASE_IMAGES[model]
