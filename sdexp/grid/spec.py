"""What one grid cell is made from: a frozen GenerationSpec, edited by the axes' values.

Everything that decides a cell's pixels is a field here, so two cells differ only where an axis
edited them, and a cell can be remade with ``sdexp generate`` from its fields alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class GenerationSpec:
    """One image: the base (model ref and how it loads), its adapters, and the sampling settings."""

    model: str  # built-in name, diffusers folder (a full fine-tune's checkpoint too) or checkpoint file
    family: str = "auto"
    vae: str | None = None
    prediction_type: str | None = None
    zero_terminal_snr: bool = False
    lora: str | None = None  # a LoRA file, or a folder holding one (a run's checkpoint)
    embedding: str | None = None  # a textual-inversion file (pivotal tuning: with ``lora``)
    scale: float = 1.0  # the LoRA's weight; 0 gives the base's image
    prompt: str = ""
    negative: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    scheduler: str = "dpmpp_2m"
    width: int | None = None  # None: the model's native resolution
    height: int | None = None

    def edited(self, edit: dict) -> GenerationSpec:
        return replace(self, **edit)

    @property
    def base_key(self) -> tuple:
        """What decides the loaded base: cells sharing it share one load (an embedding changes the
        tokenizer and text encoders, so it is part of the base)."""
        return (
            self.model,
            self.family,
            self.vae,
            self.prediction_type,
            self.zero_terminal_snr,
            self.embedding,
        )


FIELDS = frozenset(GenerationSpec.__dataclass_fields__)
