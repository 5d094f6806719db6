"""Base-model generations are made once per (base, settings, prompt, seed) and reused."""

from __future__ import annotations

import shutil

import pytest

from sdexp.base_generations import BaseGenerations, SamplingSettings
from sdexp.models.fingerprint import model_fingerprint
from sdexp.png_info import parse_parameters, read_parameters

FAST = SamplingSettings(steps=3, guidance=4.0)


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SDEXP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_generated_once_then_reused(cache_dir):
    prompts = ["a red circle on a blue background", "a green star on a white background"]
    first = BaseGenerations("tiny_shapes", FAST)
    paths = first.ensure(prompts, [0, 1])
    assert first.generated == 2 and all(p.exists() for p in paths)
    assert paths[0].parent.is_relative_to(cache_dir / "generations" / first.fingerprint)
    params = parse_parameters(read_parameters(paths[1]))
    assert params["prompt"] == prompts[1]
    assert params["params"]["Seed"] == "1" and params["params"]["Model fingerprint"] == first.fingerprint
    before = [p.read_bytes() for p in paths]

    again = BaseGenerations("tiny_shapes", FAST)  # a later run or another sweep trial
    assert again.ensure(prompts, [0, 1]) == paths and again.generated == 0
    assert [p.read_bytes() for p in paths] == before

    more = again.ensure([*prompts, prompts[0]], [0, 1, 2])  # only the new seed is generated
    assert again.generated == 1 and len(set(more)) == 3


def test_settings_and_weights_are_part_of_the_key(cache_dir, tmp_path):
    a = BaseGenerations("tiny_shapes", FAST)
    b = BaseGenerations("tiny_shapes", SamplingSettings(steps=4, guidance=4.0))
    assert a.path("p", 0) != b.path("p", 0)
    copy = shutil.copytree(a.model_dir, tmp_path / "copy")
    assert model_fingerprint(copy) == a.fingerprint  # same content, other folder: same images
    config = copy / "unet" / "config.json"
    config.write_text(config.read_text().replace('"norm_eps": 1e-05', '"norm_eps": 2e-05'))
    assert model_fingerprint(copy) != a.fingerprint  # changed content: new fingerprint


def test_prompts_and_seeds_must_pair(cache_dir):
    with pytest.raises(ValueError):
        BaseGenerations("tiny_shapes", FAST).missing(["a", "b"], [0])
