"""Training methods: Lightning-style modules over one trainer. ``build_module`` picks by name."""

from __future__ import annotations


def build_module(cfg):
    """The training module for ``cfg.method.name``."""
    from sdexp.errors import ConfigError

    name = cfg.method.name
    if name == "lora":
        from sdexp.methods.lora import LoraModule

        return LoraModule(cfg)
    raise ConfigError(f"method.name: unknown method {name!r}")
