"""Training methods: Lightning-style modules over one trainer. ``build_module`` picks by config.

A method decides which parameters train and how they are saved; the data it trains on (concepts,
class images for prior preservation) is resolved by the shared ``StableDiffusionModule``.
"""

from __future__ import annotations


def build_module(cfg):
    """The training module for ``cfg.method``: adapters (LoRA/DoRA), the full UNet, or new token
    embeddings (textual inversion)."""
    from sdexp.errors import ConfigError

    name = cfg.method.name
    full = name == "finetune" or (name == "dreambooth" and cfg.method.adapter == "full")
    if full:
        from sdexp.methods.full import FullModule

        return FullModule(cfg)
    if name == "textual_inversion":
        from sdexp.methods.textual_inversion import TextualInversionModule

        return TextualInversionModule(cfg)
    if name in ("lora", "dreambooth"):
        from sdexp.methods.lora import LoraModule

        return LoraModule(cfg)
    raise ConfigError(f"method.name: unknown method {name!r}")
