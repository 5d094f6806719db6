"""What a prompt (and, for SDXL, an image's geometry) becomes for the UNet: one value for every family.

The loss, validation, the text cache, sampling and class images all pass a ``Conditioning``, never a
bare tensor, so a family with two text encoders and micro-conditioning (SDXL) needs no special case
anywhere else. A family builds it (``ModelFamily.encode``); the UNet call takes ``unet_kwargs()``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Conditioning:
    """Rows of conditioning: token embeddings [B, L, D], and optionally a pooled embedding [B, P]
    and micro-conditioning time ids [B, 6] (original size, crop top-left, target size)."""

    embeddings: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def unet_kwargs(self, dtype: torch.dtype | None = None) -> dict:
        """Keyword arguments of ``UNet2DConditionModel.forward`` besides the sample and timestep."""
        cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
        kwargs: dict = {"encoder_hidden_states": cast(self.embeddings)}
        if self.time_ids is not None:
            if self.pooled is None:
                raise ValueError("micro-conditioning needs the pooled text embedding")
            kwargs["added_cond_kwargs"] = {"text_embeds": cast(self.pooled), "time_ids": cast(self.time_ids)}
        return kwargs

    def to(self, device=None, dtype: torch.dtype | None = None) -> Conditioning:
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return Conditioning(move(self.embeddings), move(self.pooled), move(self.time_ids))

    def detach(self) -> Conditioning:
        return Conditioning(*(None if t is None else t.detach() for t in self._parts()))

    def with_time_ids(self, time_ids: torch.Tensor) -> Conditioning:
        return replace(self, time_ids=time_ids.to(self.embeddings.device))

    def rows(self) -> list[Conditioning]:
        """One single-row Conditioning per item (what the text cache stores per caption)."""
        return [
            Conditioning(*(None if t is None else t[i : i + 1] for t in self._parts()))
            for i in range(len(self))
        ]

    def as_tensors(self) -> dict[str, torch.Tensor]:
        """Named tensors for a safetensors file (the text cache)."""
        return {k: t for k, t in zip(("embeddings", "pooled", "time_ids"), self._parts()) if t is not None}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Conditioning:
        return cls(tensors["embeddings"], tensors.get("pooled"), tensors.get("time_ids"))

    @classmethod
    def cat(cls, items: list[Conditioning]) -> Conditioning:
        """Rows of several conditionings in order (every part present in all or in none)."""
        parts = list(zip(*(item._parts() for item in items)))
        out = []
        for values in parts:
            if all(v is None for v in values):
                out.append(None)
            elif any(v is None for v in values):
                raise ValueError("cannot concatenate conditionings with and without the same parts")
            else:
                out.append(torch.cat(values))
        return cls(*out)

    def repeat(self, n: int) -> Conditioning:
        """Each row ``n`` times (one caption at every timestep of the validation grid)."""
        return Conditioning(*(None if t is None else t.repeat_interleave(n, dim=0) for t in self._parts()))

    def _parts(self) -> tuple:
        return (self.embeddings, self.pooled, self.time_ids)
