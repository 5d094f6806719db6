"""Whole LoRA runs on the built-in tiny model: learning, determinism, files diffusers loads, logs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from lora_helpers import pipeline_image

from sdexp.run import train_run
from sdexp.tracking.run_folder import read_metrics

FAST = ("logger=none", "train.sample_steps=4")


def _val_losses(run_dir):
    return [(row["step"], row["val/loss"]) for row in read_metrics(run_dir) if "val/loss" in row]


@pytest.fixture()
def fixed_date(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1780000000")


def test_loss_on_a_fixed_batch_falls_with_conv_and_attention_lora(compose, toy_images, tmp_path):
    cfg = compose(
        *FAST,
        f"data.dir={toy_images}",
        "data.prompt=a photo of sks toy",
        "method.targets=all",
        "method.rank=8",
        "train.lr=2e-3",
        "train.steps=60",
        "train.val_every=20",
        "data.val_images=6",
    )
    result = train_run(cfg, tmp_path / "run")
    losses = _val_losses(result.run_dir)
    assert [s for s, _ in losses] == [0, 20, 40, 60]
    first, last = losses[0][1], losses[-1][1]
    assert last < 0.8 * first, losses


def test_same_seed_gives_byte_identical_lora_files(compose, toy_images, tmp_path, fixed_date):
    def run(name, seed):
        cfg = compose(
            *FAST,
            f"data.dir={toy_images}",
            "data.prompt=a photo of sks toy",
            "method.targets=all",
            "method.train_text_encoder=true",
            "data.flip=true",
            "data.crop=random",
            f"train.seed={seed}",
            "train.steps=6",
            "train.lr=1e-3",
        )
        final = train_run(cfg, tmp_path / name).final_checkpoint
        return (final / "lora.safetensors").read_bytes(), (
            final / "diffusers" / "pytorch_lora_weights.safetensors"
        ).read_bytes()

    a, b, c = run("a", 3), run("b", 3), run("c", 4)
    assert a == b
    assert a[0] != c[0] and a[1] != c[1]


@pytest.mark.parametrize("model", ["tiny", "tiny_sd2", "tiny_sdxl"])
def test_trained_files_load_through_diffusers_and_give_the_in_memory_image(
    model, compose, toy_images, tmp_path
):
    """A LoRA run with text-encoder LoRA (SDXL: on both encoders) on each family: the kohya and the
    diffusers files load through the family's own pipeline (StableDiffusionXLPipeline for XL) and
    give the in-memory model's image for a fixed seed; scale 0 gives the base's."""
    from sdexp.methods import build_module
    from sdexp.models.loading import load_base
    from sdexp.trainer import Trainer

    cfg = compose(
        *FAST,
        f"model={model}",
        f"data.dir={toy_images}",
        "data.prompt=a photo of sks toy",
        "method.targets=all",
        "method.train_text_encoder=true",
        "method.alpha=2",
        "train.steps=8",
        "train.lr=5e-3",
    )
    module = build_module(cfg)
    trainer = Trainer(run_dir=tmp_path / "run", max_steps=cfg.train.steps, seed=0, device="cpu")
    trainer.fit(module)
    for m in module.trainable_modules():
        m.eval()

    def image(pipe):
        return pipeline_image(pipe, "a photo of sks toy", seed=7)

    trained = image(module.base.pipeline())
    base_image = image(load_base(model).pipeline())
    assert np.abs(trained - base_image).max() > 1e-3
    final = tmp_path / "run" / "checkpoints" / "final"
    for path in (final / "lora.safetensors", final / "diffusers" / "pytorch_lora_weights.safetensors"):
        pipe = load_base(model).pipeline()
        assert type(pipe).__name__ == module.base.family.pipeline_class_name
        pipe.load_lora_weights(str(path), adapter_name="trained")
        np.testing.assert_allclose(image(pipe), trained, atol=2e-4, err_msg=str(path))
        pipe.set_adapters(["trained"], adapter_weights=[0.0])
        np.testing.assert_allclose(image(pipe), base_image, atol=2e-4, err_msg=str(path))


def test_wandb_offline_run_matches_metrics_jsonl(compose, toy_images, tmp_path, monkeypatch):
    from sdexp.tracking.wandb_offline import read_offline_run

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose(
        f"data.dir={toy_images}",
        "data.prompt=a photo of sks toy",
        "train.steps=5",
        "train.val_every=2",
        "logger=wandb",
        "logger.group=g1",
        "logger.tags=[t1]",
        "logger.run_name=r1",
        "train.sample_prompts=[a photo of sks toy]",
        "train.sample_steps=2",
    )
    run_dir = train_run(cfg, tmp_path / "run").run_dir
    by_step: dict[int, dict] = {}
    for row in read_metrics(run_dir):
        by_step.setdefault(row["step"], {}).update(
            {k: v for k, v in row.items() if k not in ("step", "time")}
        )
    offline = read_offline_run(run_dir)
    history = {row["_step"]: row for row in offline["history"]}
    assert set(by_step) <= set(history)
    for step, values in by_step.items():
        for key, value in values.items():
            assert math.isclose(history[step][key], value, rel_tol=1e-6), (step, key)
    assert offline["run"]["group"] == "g1" and offline["run"]["tags"] == ["t1"]
    assert offline["config"]["train"]["steps"] == 5
    assert offline["summary"]["steps"] == 5
    from PIL import Image

    grid = Image.open(run_dir / "samples" / "step-000005.png")
    assert grid.size == (64, 64)  # one prompt at the tiny model's 64 px
    assert any(k.startswith("samples") for row in offline["history"] for k in row)


def test_early_stopping_ends_the_run_and_says_why(compose, toy_images, tmp_path):
    cfg = compose(
        *FAST,
        f"data.dir={toy_images}",
        "data.prompt=x",
        "train.steps=50",
        "train.val_every=2",
        "train.lr=1e-3",
        "method.targets=all",
        "train.early_stopping.mode=max",
        "train.early_stopping.patience=2",  # loss falls: never "improves"
    )
    result = train_run(cfg, tmp_path / "run")
    run_json = json.loads((result.run_dir / "run.json").read_text())
    assert result.steps == 4
    assert run_json["stop_reason"].startswith("early_stopping: val/loss")
    assert (result.run_dir / "checkpoints" / "final" / "lora.safetensors").exists()


def test_accumulation_counts_optimizer_steps_and_text_encoder_has_its_own_lr(compose, toy_images, tmp_path):
    cfg = compose(
        *FAST,
        f"data.dir={toy_images}",
        "data.prompt=x",
        "train.steps=3",
        "train.batch_size=2",
        "train.gradient_accumulation=2",
        "method.train_text_encoder=true",
        "method.text_encoder_lr=5e-5",
        "train.checkpoint_every=2",
    )
    result = train_run(cfg, tmp_path / "run")
    rows = [r for r in read_metrics(result.run_dir) if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["train/lr/text_encoder"] == 5e-5 and r["train/lr/unet"] == 1e-4 for r in rows)
    assert sorted(p.name for p in (result.run_dir / "checkpoints").iterdir()) == ["final", "step-000002"]


def test_a_folder_holding_a_run_is_not_overwritten(compose, toy_images, tmp_path):
    from sdexp.errors import UserError

    cfg = compose(*FAST, f"data.dir={toy_images}", "data.prompt=x", "train.steps=1")
    first = train_run(cfg, tmp_path / "run").final_checkpoint / "lora.safetensors"
    before = first.read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        train_run(cfg, tmp_path / "run")
    assert first.read_bytes() == before


def test_a_failing_run_records_why_and_keeps_its_logs(compose, toy_images, tmp_path, monkeypatch):
    from sdexp.methods import stable_diffusion

    cfg = compose(*FAST, f"data.dir={toy_images}", "data.prompt=x", "train.steps=5")
    real = stable_diffusion.per_sample_loss
    calls = {"n": 0}

    def nan_after_two(*args, **kwargs):
        loss = real(*args, **kwargs)
        if not torch.is_grad_enabled():  # validation
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(stable_diffusion, "per_sample_loss", nan_after_two)
    with pytest.raises(FloatingPointError, match="step 3"):
        train_run(cfg, tmp_path / "run")
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["status"] == "failed" and "FloatingPointError" in run_json["error"]
    assert run_json["steps"] == 2
    assert [r["step"] for r in read_metrics(tmp_path / "run") if "train/loss" in r] == [1, 2]


def test_sd15_config_trains_from_an_fp16_only_diffusers_folder(compose, toy_images, tmp_path):
    """model=sd15 model.path=DIR with only *.fp16.safetensors files (as many SD 1.5 downloads ship)."""
    from sdexp.models.loading import detect_variant, load_base

    folder = tmp_path / "sd15-fp16"
    pipe = load_base("tiny").pipeline().to(torch.float16)
    pipe.save_pretrained(folder, variant="fp16")
    assert detect_variant(folder) == "fp16"
    cfg = compose(
        *FAST,
        "model=sd15",
        f"model.path={folder}",
        f"data.dir={toy_images}",
        "data.prompt=x",
        "train.resolution=64",
        "train.steps=2",
    )
    result = train_run(cfg, tmp_path / "run")
    assert result.steps == 2 and math.isfinite(result.last_val["val/loss"])
    from safetensors import safe_open

    with safe_open(str(result.final_checkpoint / "lora.safetensors"), "pt") as f:
        assert f.metadata()["ss_base_model_version"] == "sd_v1"
        assert f.metadata()["ss_resolution"] == "(64, 64)"


def test_held_out_validation_images_are_used_for_val_loss(compose, toy_images, tmp_path):
    from toy_images import write_demo_images

    from sdexp.errors import UserError

    held_out = write_demo_images(tmp_path / "held-out", n=2, seed=9)
    base = (*FAST, f"data.dir={toy_images}", "data.prompt=x", "train.steps=1")
    with_val = train_run(compose(*base, f"data.val_dir={held_out}"), tmp_path / "a")
    without = train_run(compose(*base), tmp_path / "b")
    assert with_val.last_val["val/loss"] != without.last_val["val/loss"]
    # the same measure on training images, and the over-fitting gap between the two
    v = with_val.last_val
    assert v["val/gap"] == pytest.approx(v["val/loss"] - v["val/train_loss"])
    assert "val/gap" not in without.last_val and "val/train_loss" not in without.last_val
    with pytest.raises(UserError, match="data.val_dir"):
        train_run(compose(*base, f"data.val_dir={tmp_path / 'missing'}"), tmp_path / "c")
