"""What the methods are for, measured on the self-trained tiny_shapes model (slow; seeded).

- Prior preservation: DreamBooth with class images forgets less than without, at the same steps,
  learning rate and seed (`bench/prior_preservation.py` measures three seeds: the forgetting FID
  with the prior is 0.45-0.56 of the one without).
- Two concepts of one class trained together: each token's images look like its own concept.
"""

from __future__ import annotations

import json

import pytest

from sdexp.run import train_run

pytestmark = pytest.mark.slow  # two torch threads: these train for 150 steps


def _final_metrics(run_dir, step: int) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("step") == step and "eval/forgetting/fid" in r][-1]


def test_prior_preservation_forgets_less(tmp_path, compose, monkeypatch):
    from sdexp.world.shapes import write_concept

    monkeypatch.setenv("SDEXP_CACHE", str(tmp_path / "cache"))
    data = write_concept(tmp_path / "data", 16, 0)
    common = [
        "model=tiny_shapes",
        "method=dreambooth",
        "eval=shapes",
        "eval.images=2",
        "eval.prior_images=32",
        "eval.prior_prompts=[a star]",  # DreamBooth's drift: does the class turn into the subject?
        "logger=none",
        f"data.dir={data}",
        "data.caption_extension=.dreambooth",  # every image is "a sks star", as in DreamBooth
        "method.instance_prompt=a sks star",
        "method.class_prompt=a star",
        "method.num_class_images=32",
        "method.class_steps=10",
        "method.class_guidance=4.0",
        "method.class_seed=1000",  # not the probe's own base images (eval seeds 0..31)
        "method.rank=8",
        "train.steps=150",
        "train.lr=3e-3",
        "train.batch_size=4",
        "train.seed=0",
    ]
    arms = {}
    for prior in (False, True):
        cfg = compose(*common, f"method.prior_preservation={str(prior).lower()}")
        result = train_run(cfg, tmp_path / f"prior-{prior}", notify=lambda *_: None)
        arms[prior] = _final_metrics(result.run_dir, 150)
    with_prior, without = arms[True], arms[False]
    # measured (seed 0): FID 0.291 against 0.544; CLIP-T change +4.8 against -3.6 points
    assert with_prior["eval/forgetting/fid"] < 0.75 * without["eval/forgetting/fid"]
    assert with_prior["eval/forgetting/clip_t_change"] > without["eval/forgetting/clip_t_change"]


def test_two_concepts_of_one_class_each_follow_their_token(tmp_path, compose):
    from PIL import Image

    from sdexp.base_generations import SamplingSettings, generate_images, sampling_pipeline
    from sdexp.evaluation.scorer import resolve_clip_spec
    from sdexp.metrics.clip_models import load_clip
    from sdexp.metrics.scores import mean_similarity
    from sdexp.world.shapes import write_concept

    folders = {
        "sks": write_concept(tmp_path / "striped", 8, 0, concept="striped_star", token="sks"),
        "zwx": write_concept(tmp_path / "checker", 8, 1, concept="checker_star", token="zwx"),
    }
    cfg = compose(
        "model=tiny_shapes",
        "eval=none",
        "logger=none",
        "data.concepts=[" + ", ".join(f"{{dir: '{d}'}}" for d in folders.values()) + "]",
        "method.rank=8",
        "train.steps=150",
        "train.lr=3e-3",
        "train.batch_size=4",
        "data.val_images=1",
    )
    result = train_run(cfg, tmp_path / "run", notify=lambda *_: None)
    clip = load_clip(resolve_clip_spec("auto", "tiny_shapes"))
    refs = {
        t: clip.encode_images([Image.open(p).convert("RGB") for p in sorted(d.glob("*.png"))])
        for t, d in folders.items()
    }
    settings = SamplingSettings(steps=10, guidance=4.0)

    def margins(lora) -> dict[str, float]:
        """Per token: similarity to its own concept's images minus to the other's."""
        pipe, _ = sampling_pipeline("tiny_shapes", lora=lora)
        out = {}
        for token, other in (("sks", "zwx"), ("zwx", "sks")):
            prompts = [
                f"a {token} star on a {bg} background" for bg in ("blue", "green", "white", "black")
            ] * 4
            images = clip.encode_images(generate_images(pipe, prompts, list(range(16)), settings, 64))
            out[token] = mean_similarity(images, refs[token]) - mean_similarity(images, refs[other])
        return out

    base, trained = margins(None), margins(result.run_dir / "checkpoints" / "final" / "lora.safetensors")
    for token in ("sks", "zwx"):
        assert trained[token] > 0, (token, trained)  # closer to its own concept than to the other's
        assert trained[token] > base[token], (token, base, trained)  # and training made it so
