"""The shipped `tiny_shapes` model: loads offline, is small, its CLIP judges the world, it follows prompts,
and a short LoRA run on it learns a new concept."""

from __future__ import annotations

import pytest
import torch

from sdexp.models.loading import BUILTIN_DIR, load_base, native_resolution, resolve_model


@pytest.fixture(scope="module")
def judge():
    from sdexp.metrics.clip_models import load_clip

    return load_clip("tiny_shapes")


def test_loads_offline_as_a_diffusers_pipeline_and_generates():
    from diffusers import StableDiffusionPipeline

    folder = resolve_model("tiny_shapes")
    assert folder == BUILTIN_DIR / "tiny_shapes"
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, torch_dtype=torch.float32)
    image = pipe(
        "a red circle on a blue background", num_inference_steps=4, generator=torch.Generator().manual_seed(0)
    )
    assert image.images[0].size == (64, 64)
    assert native_resolution("tiny_shapes") == 64
    base = load_base("tiny_shapes")
    assert base.prediction_type == "v_prediction"
    assert base.unet.config.sample_size == 16 and base.vae.config.latent_channels == 4


def test_is_small_and_fp16_safetensors():
    from safetensors import safe_open

    files = [p for p in (BUILTIN_DIR / "tiny_shapes").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 15 * 1024 * 1024
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert {p.parent.name for p in weights} == {"unet", "vae", "text_encoder", "clip"}
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".ckpt")]
    for path in weights:
        with safe_open(path, "pt") as f:
            assert all(f.get_slice(k).get_dtype() == "F16" for k in f.keys()), path


def test_clip_zero_shot_on_held_out_world_images(judge, tmp_path):
    from sdexp.world.evaluate import zero_shot_accuracy
    from sdexp.world.shapes import write_world

    heldout = write_world(tmp_path / "heldout", n=300, seed=7, split="heldout")
    acc = zero_shot_accuracy(judge, heldout)
    assert acc["images"] == 300
    assert acc["colour"] >= 0.95 and acc["shape"] >= 0.95 and acc["background"] >= 0.95, acc


@pytest.mark.slow
def test_follows_200_held_out_prompts(judge):
    """The issue's bar: ≥ 80% colour and background; shapes too, since the recipe ran on a GPU."""
    from sdexp.base_generations import sampling_pipeline
    from sdexp.world.evaluate import heldout_prompts, prompt_accuracy

    pipe, size = sampling_pipeline("tiny_shapes")
    triples = heldout_prompts(200, seed=0)
    acc, _ = prompt_accuracy(pipe, judge, triples, seed=0, steps=20, guidance=4.0, size=size)
    assert acc["heldout_pairs/prompts"] > 50  # the held-out colour×shape pairs are among them
    assert acc["colour"] >= 0.8 and acc["background"] >= 0.8 and acc["shape"] >= 0.8, acc
    assert acc["heldout_pairs/colour"] >= 0.8 and acc["heldout_pairs/shape"] >= 0.8, acc


@pytest.mark.slow
def test_short_lora_run_learns_the_concept(judge, tmp_path, compose):
    from sdexp.run import train_run
    from sdexp.world.concept_eval import evaluate_concept
    from sdexp.world.shapes import write_concept

    data = write_concept(tmp_path / "concept", n=16, seed=0)
    cfg = compose(
        "model=tiny_shapes",
        f"data.dir={data}",
        "method.rank=8",
        "method.targets=all",
        "train.lr=3e-3",
        "train.steps=60",
        "train.batch_size=4",
        "logger=none",
        "eval=none",  # scored below by the world's own evaluate_concept, a cross-check of the metrics
    )
    result = train_run(cfg, tmp_path / "run", notify=lambda *_: None)
    lora = result.final_checkpoint / "lora.safetensors"
    common = dict(judge=judge, concept_images=8, ordinary_prompts=0, steps=12)
    before = evaluate_concept("tiny_shapes", data, **common)["concept_similarity"]
    after = evaluate_concept("tiny_shapes", data, lora=lora, **common)["concept_similarity"]
    assert after - before >= 0.1, (before, after)
