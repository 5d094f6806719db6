"""Prompt encodings kept across a run's scorings: every checkpoint is scored on the same prompts in
the same batches, and while the text encoders are frozen their encodings cannot change.

The cache sits on the pipeline's own ``encode_prompt`` (every family's pipeline encodes through it,
SDXL's pooled embeddings included), so what is reused is exactly what the pipeline would have
computed, and no family knowledge is needed here. A run whose text encoders train (a LoRA on them,
textual inversion) must not use it: its encodings change from checkpoint to checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _key(args: tuple, kwargs: dict) -> str | None:
    """The call's arguments as a key, or None when any is a tensor (given embeddings: not cached)."""
    values = [*args, *kwargs.values()]
    if any(isinstance(v, torch.Tensor) for v in values):
        return None
    return repr((args, sorted(kwargs.items())))


def _copy(out):
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_copy(o) for o in out)
    return out


@contextmanager
def cached_prompt_encodings(pipe, store: dict) -> Iterator:
    """``pipe`` whose ``encode_prompt`` answers from ``store`` (filled on first use) for the same
    arguments; the pipeline's own method is back afterwards."""
    encode = pipe.encode_prompt

    def cached(*args, **kwargs):
        key = _key(args, kwargs)
        if key is None:
            return encode(*args, **kwargs)
        if key not in store:
            store[key] = _copy(encode(*args, **kwargs))
        return _copy(store[key])

    pipe.encode_prompt = cached
    try:
        yield pipe
    finally:
        del pipe.encode_prompt
