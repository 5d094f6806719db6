"""DreamBooth (prior preservation, DoRA, buckets, caches) and full fine-tuning with EMA on SD 2.x and
SDXL: runs complete and their checkpoints load in the family's own diffusers pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdexp.run import train_run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
SMALL = ["logger=none", "eval=none", "train.steps=3", "train.val_timesteps=2", "data.val_images=1"]
BUCKETS = [
    "data.buckets.enabled=true",
    "data.buckets.min_resolution=32",
    "data.buckets.max_resolution=128",
    "data.buckets.step=16",
]


def _image(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        "a photo of sks toy", num_inference_steps=2, height=64, width=64, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]  # fmt: skip


@pytest.fixture()
def fresh_generations(tmp_path, monkeypatch):
    """A cache without generated images (class images are generated, not found), same models."""
    from sdexp.models.loading import resolve_model
    from sdexp.models.tiny import cache_root

    for model in ("tiny_sd2", "tiny_sdxl"):
        resolve_model(model)  # built in the real cache first
    fresh = tmp_path / "cache"
    fresh.mkdir()
    (fresh / "models").symlink_to(cache_root() / "models")
    monkeypatch.setenv("SDEXP_CACHE", str(fresh))


@pytest.mark.parametrize("model", ["tiny_sd2", "tiny_sdxl"])
def test_dreambooth_with_prior_dora_buckets_and_caches(
    model, compose, toy_images, tmp_path, fresh_generations
):
    from sdexp.models.loading import load_base

    cfg = compose(
        *SMALL,
        *BUCKETS,
        f"model={model}",
        f"data.dir={toy_images}",
        "method=dreambooth",
        "method.instance_prompt=a photo of sks toy",
        "method.class_prompt=a photo of a toy",
        "method.num_class_images=2",
        "method.class_steps=2",
        "method.dora=true",
        "train.batch_size=2",
        "train.lr=1e-2",
        "data.cache.latents=true",
        "data.cache.text=true",
        f"data.cache.dir={tmp_path / 'cache'}",
    )
    result = train_run(cfg, tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert result.steps == 3 and run["data"]["class_images_generated"] == 2
    assert run["data"]["cache"]["latents_encoded"] > 0 and run["data"]["cache"]["text_encoded"] > 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/prior_loss" in r for r in rows)  # instance and class images in one batch
    again = train_run(cfg, tmp_path / "again")  # a second run reads the caches it wrote
    second = json.loads((tmp_path / "again" / "run.json").read_text())["data"]["cache"]
    assert second["latents_from_cache"] > 0 and second["text_from_cache"] > 0 and again.steps == 3
    base = load_base(model)
    pipe = base.pipeline()
    plain = _image(pipe)
    pipe.load_lora_weights(str(result.final_checkpoint / "lora.safetensors"), adapter_name="db")
    assert np.abs(_image(pipe) - plain).max() > 1e-4


@pytest.mark.parametrize("model", ["tiny_sd2", "tiny_sdxl"])
def test_full_finetune_with_ema_saves_a_pipeline_of_the_family(model, compose, toy_images, tmp_path):
    from sdexp.models.families import get_family
    from sdexp.models.loading import load_base

    cfg = compose(
        *SMALL,
        f"model={model}",
        f"data.dir={toy_images}",
        "data.prompt=a photo of sks toy",
        "method=finetune",
        "method.train_text_encoder=true",
        "method.ema_decay=0.9",
        "train.lr=1e-3",
        "train.save_dtype=fp16",
    )
    result = train_run(cfg, tmp_path / "run")
    final = result.final_checkpoint
    family = get_family(load_base(model).family.name)
    for encoder in family.text_encoder_attributes:
        assert (final / encoder / "model.safetensors").is_file()
    from safetensors import safe_open

    with safe_open(final / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # train.save_dtype halves it
    pipe = family.pipeline_class().from_pretrained(final, torch_dtype=torch.float32)  # as a user loads it
    assert type(pipe).__name__ == family.pipeline_class_name
    trained = _image(pipe)
    assert np.abs(trained - _image(load_base(model).pipeline())).max() > 1e-4
