"""Forgetting and prompt-drift probes on tiny_shapes: zero for the base itself, large for a broken fine-tune."""

from __future__ import annotations

import pytest

from sdexp.base_generations import BaseGenerations, SamplingSettings, generate_images
from sdexp.metrics.probes import forgetting_probe, prompt_drift
from sdexp.world.evaluate import heldout_prompts
from sdexp.world.shapes import prompt

SETTINGS = SamplingSettings(steps=8, guidance=4.0)


@pytest.fixture(scope="module")
def clip():
    from sdexp.metrics.clip_models import load_clip

    return load_clip("tiny_shapes")


@pytest.mark.slow
def test_forgetting_is_nothing_for_the_base_and_large_for_a_broken_lora(clip, compose, tmp_path, monkeypatch):
    from sdexp.base_generations import sampling_pipeline
    from sdexp.run import train_run
    from sdexp.world.shapes import write_concept

    monkeypatch.setenv("SDEXP_CACHE", str(tmp_path / "cache"))
    prompts = [prompt(*t) for t in heldout_prompts(16, seed=5)]
    seeds = list(range(16))
    base = BaseGenerations("tiny_shapes", SETTINGS).images(prompts, seeds)
    same = forgetting_probe(clip, base, base, prompts)
    # KID is unbiased, so identical small sets give a value near 0 of either sign, not exactly 0
    assert same["forgetting/clip_t_change"] == 0 and abs(same["forgetting/kid"]) < 0.01

    data = write_concept(tmp_path / "concept", n=8, seed=0)
    cfg = compose("model=tiny_shapes", f"data.dir={data}", "method.rank=8", "method.targets=all",
                  "train.lr=1e-2", "train.steps=30", "train.batch_size=4", "logger=none")  # fmt: skip
    lora = train_run(cfg, tmp_path / "run", notify=lambda *_: None).final_checkpoint / "lora.safetensors"
    pipe, size = sampling_pipeline("tiny_shapes", lora=lora)
    broken = generate_images(pipe, prompts, seeds, SETTINGS, size)
    forgot = forgetting_probe(clip, base, broken, prompts)
    assert forgot["forgetting/clip_t_change"] < -5, forgot
    assert (
        forgot["forgetting/kid"] > same["forgetting/kid"] + 0.01
        and forgot["forgetting/fid"] > same["forgetting/fid"] + 0.1
    ), forgot


def test_prompt_drift_uses_only_prompts_without_the_token(clip):
    from PIL import Image

    images = [Image.new("RGB", (64, 64), c) for c in ("red", "blue", "green")]
    prompts = ["a sks star on a red background", "a blue square on a blue background", "a sks star"]
    value = prompt_drift(clip, images, prompts, "sks")
    assert value == pytest.approx(float(clip.score(images[1:2], prompts[1:2])[0]))
    with pytest.raises(ValueError, match="sks"):
        prompt_drift(clip, images[:1], prompts[:1], "sks")
    with pytest.raises(ValueError):
        forgetting_probe(clip, images, images[:2], prompts)
