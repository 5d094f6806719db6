"""Scoring generates in batches and reuses its prompt encodings: neither may change an image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdexp.base_generations import SamplingSettings, generate_images, sampling_pipeline
from sdexp.evaluation.prompt_cache import cached_prompt_encodings

FAST = SamplingSettings(steps=4, guidance=4.0)
PROMPTS = ["a red circle on a blue background", "a green star on a white background"] * 2
SEEDS = [3, 4, 5, 6]


@pytest.fixture(scope="module")
def pipe():
    pipe, size = sampling_pipeline("tiny_shapes", sampler=FAST.sampler)
    pipe.size = size
    return pipe


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(i, dtype=np.int16) for i in images])


def test_a_batch_gives_each_seed_the_image_it_gives_alone(pipe):
    together = _pixels(generate_images(pipe, PROMPTS, SEEDS, FAST, pipe.size))
    alone = _pixels(
        [generate_images(pipe, [p], [s], FAST, pipe.size)[0] for p, s in zip(PROMPTS, SEEDS, strict=True)]
    )
    # Batched kernels round differently (1e-6 in fp32): at most a level or two of an 8-bit pixel.
    assert np.abs(together - alone).max() <= 2
    assert np.abs(together[0] - together[2]).max() > 10  # same prompt, other seed: another image


def test_cached_prompt_encodings_are_the_fresh_ones_and_give_the_same_images(pipe):
    calls = []
    hook = pipe.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    store: dict = {}
    try:
        fresh = pipe.encode_prompt(PROMPTS, pipe.device, 1, True, None)
        with cached_prompt_encodings(pipe, store):
            first = pipe.encode_prompt(PROMPTS, pipe.device, 1, True, None)
            n = len(calls)
            second = pipe.encode_prompt(PROMPTS, pipe.device, 1, True, None)
            assert len(calls) == n and len(store) == 1  # answered from the store
            other = pipe.encode_prompt(PROMPTS[:2], pipe.device, 1, True, None)
            assert len(store) == 2 and other[0].shape[0] == 2
            cached_images = generate_images(pipe, PROMPTS, SEEDS, FAST, pipe.size)
            cached_images = generate_images(pipe, PROMPTS, SEEDS, FAST, pipe.size)  # from the store
        assert "encode_prompt" not in pipe.__dict__  # the pipeline's own method is back
    finally:
        hook.remove()
    for a, b, c in zip(fresh, first, second, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    second[0].add_(1.0)  # a caller changing its copy leaves the store as it was
    with cached_prompt_encodings(pipe, store):
        assert torch.equal(pipe.encode_prompt(PROMPTS, pipe.device, 1, True, None)[0], fresh[0])
    plain = generate_images(pipe, PROMPTS, SEEDS, FAST, pipe.size)
    assert np.array_equal(_pixels(cached_images), _pixels(plain))
