"""The image-set scores on known inputs, with the tiny_shapes CLIP as the feature extractor."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from sdexp.metrics.scores import clip_i, clip_t, distribution_distance, fid_kid, memorisation
from sdexp.world.shapes import caption, render, sample_scene


@pytest.fixture(scope="module")
def clip():
    from sdexp.metrics.clip_models import load_clip

    return load_clip("tiny_shapes")


def _world(n: int, seed: int):
    rng = random.Random(seed)
    scenes = [sample_scene(rng, "train", p_two=0.0) for _ in range(n)]
    return [render(s) for s in scenes], [caption(s) for s in scenes]


def _noise(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


def test_clip_t_ranks_the_matching_prompt_first(clip):
    images, prompts = _world(40, seed=1)
    shuffled = prompts[1:] + prompts[:1]
    assert clip_t(clip, images, prompts) > clip_t(clip, images, shuffled) + 5
    assert 0 <= clip_t(clip, images, prompts) <= 100
    with pytest.raises(ValueError):
        clip_t(clip, images, prompts[:-1])


def test_clip_i_is_one_for_the_same_image_and_lower_for_others(clip):
    images, _ = _world(6, seed=2)
    assert clip_i(clip, images[:1], images[:1]) == pytest.approx(1.0, abs=1e-5)
    assert clip_i(clip, images[:1], images[1:]) < 0.99
    assert clip_i(clip, images, images) > clip_i(clip, images, _noise(6, seed=0))


def test_memorisation_finds_copies(clip):
    training, _ = _world(20, seed=3)
    others, _ = _world(20, seed=4)
    copies = memorisation(clip, training[:10], training)
    assert copies["copy_share"] == 1.0 and copies["nearest_max"] == pytest.approx(1.0, abs=1e-5)
    fresh = memorisation(clip, _noise(10, seed=1), training)
    assert fresh["copy_share"] == 0.0 and fresh["nearest_mean"] < copies["nearest_mean"]
    assert memorisation(clip, others, training)["nearest_mean"] < copies["nearest_mean"]


def test_fid_is_zero_for_identical_sets_and_far_for_noise(clip):
    a, _ = _world(120, seed=5)
    b, _ = _world(120, seed=6)
    same = distribution_distance(clip, a, a)
    assert abs(same.fid) < 1e-3 and abs(same.kid) < 1e-3
    world = distribution_distance(clip, a, b)
    noise = distribution_distance(clip, a, _noise(120, seed=2))
    assert noise.fid > 5 * world.fid and noise.kid > 5 * world.kid
    assert (world.samples_a, world.samples_b, world.feature_dim) == (120, 120, 64)
    assert world.warning is None


def test_kid_is_seeded_and_small_sets_warn():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 8)), rng.normal(0.5, 1.0, size=(30, 8))
    state = np.random.get_state()
    first, second = fid_kid(a, b, seed=1), fid_kid(a, b, seed=1)
    assert first == second
    assert np.random.get_state()[1].tolist() == state[1].tolist()  # the global RNG is left alone
    assert "30 samples" in first.warning
    with pytest.raises(ValueError):
        fid_kid(a, b[:, :4])
