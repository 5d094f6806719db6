"""method=finetune (and dreambooth adapter=full): the whole UNet trains, EMA weights are what
checkpoints hold, and a checkpoint is a pipeline folder diffusers loads offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdexp.run import preflight
from sdexp.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

FT = [
    "model=tiny",
    "method=finetune",
    "eval=none",
    "logger=none",
    "data.prompt=a photo of sks toy",
    "data.val_images=1",
    "train.steps=6",
    "train.batch_size=2",
    "train.lr=1e-3",
    "train.checkpoint_every=3",
]


def _fit(cfg, run_dir):
    module = preflight(cfg, require_judge=False)
    trainer = Trainer.from_config(cfg.train, run_dir)
    trainer.fit(module)
    return module, trainer


def _image(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        "a photo of sks toy", num_inference_steps=3, height=64, width=64, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]  # fmt: skip


def test_checkpoints_hold_ema_weights_and_load_in_diffusers(tmp_path, toy_images, compose):
    from diffusers import StableDiffusionPipeline

    from sdexp.models.loading import load_base

    module, trainer = _fit(compose(*FT, f"data.dir={toy_images}", "method.ema_decay=0.9"), tmp_path / "run")
    final = tmp_path / "run" / "checkpoints" / "final"
    saved = load_file(final / "unet" / "diffusion_pytorch_model.safetensors")
    raw = dict(module.base.unet.named_parameters())
    ema = dict(
        zip([n for n, p in module.base.unet.named_parameters()], module.ema.shadow_params, strict=True)
    )
    name = "conv_in.weight"
    assert not torch.equal(ema[name], raw[name])  # EMA lags the raw weights ...
    torch.testing.assert_close(saved[name], ema[name].cpu(), rtol=0, atol=0)  # ... and is what was saved
    base_unet = load_base("tiny").unet.state_dict()
    assert not torch.equal(saved[name], base_unet[name])  # and it moved away from the base

    pipe = StableDiffusionPipeline.from_pretrained(final, local_files_only=True, safety_checker=None)
    base_image = _image(load_base("tiny").pipeline())
    assert np.abs(_image(pipe) - base_image).max() > 1e-3  # its images differ from the base's

    # Frozen components are written once per run and hard-linked into every checkpoint.
    step3 = tmp_path / "run" / "checkpoints" / "step-000003"
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert (step3 / vae).stat().st_ino == (final / vae).stat().st_ino
    assert (step3 / "unet" / "diffusion_pytorch_model.safetensors").stat().st_ino != (
        final / "unet" / "diffusion_pytorch_model.safetensors"
    ).stat().st_ino


def test_without_ema_the_raw_weights_are_saved(tmp_path, toy_images, compose):
    module, _ = _fit(
        compose(*FT, f"data.dir={toy_images}", "method.ema_decay=0", "train.steps=2"), tmp_path / "run"
    )
    assert module.ema is None
    saved = load_file(
        tmp_path / "run" / "checkpoints" / "final" / "unet" / "diffusion_pytorch_model.safetensors"
    )
    torch.testing.assert_close(
        saved["conv_in.weight"], module.base.unet.conv_in.weight.detach().cpu(), rtol=0, atol=0
    )


def test_the_text_encoder_trains_with_its_own_rate_when_asked(tmp_path, toy_images, compose):
    from sdexp.models.loading import load_base

    cfg = compose(
        *FT,
        f"data.dir={toy_images}",
        "method.train_text_encoder=true",
        "method.text_encoder_lr=5e-4",
        "train.steps=2",
    )
    module, trainer = _fit(cfg, tmp_path / "run")
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-3, 5e-4]
    saved = load_file(tmp_path / "run" / "checkpoints" / "final" / "text_encoder" / "model.safetensors")
    base = load_base("tiny").text_encoders[0].state_dict()
    key = next(k for k in saved if k.endswith("q_proj.weight"))
    assert not torch.equal(saved[key], base[key])


def test_dreambooth_full_adapter_trains_the_unet_with_the_prior(tmp_path, toy_images, compose, monkeypatch):
    monkeypatch.setenv("SDEXP_CACHE", str(tmp_path / "cache"))
    cfg = compose(
        *FT,
        f"data.dir={toy_images}",
        "method=dreambooth",
        "method.adapter=full",
        "method.instance_prompt=a photo of sks toy",
        "method.class_prompt=a photo of toy",
        "method.num_class_images=2",
        "method.class_steps=2",
        "train.steps=2",
    )
    module, trainer = _fit(cfg, tmp_path / "run")
    assert (
        type(module).__name__ == "FullModule" and module.ema is None
    )  # dreambooth's ema_decay defaults to 0
    assert "train/prior_loss" in trainer.state.last_logs
    assert (tmp_path / "run" / "checkpoints" / "final" / "model_index.json").is_file()


@pytest.mark.slow
def test_sdexp_eval_scores_a_full_finetune_run(tmp_path, compose, cli):
    """A finetune run's checkpoints are pipeline folders: `sdexp eval` scores them as models."""
    import json

    from sdexp.run import train_run
    from sdexp.world.shapes import write_concept

    data = write_concept(tmp_path / "data", 4, 0)
    overrides = ["model=tiny_shapes", "method=finetune", "eval=shapes", "eval.images=2", "eval.prior_images=2",
                 "eval.steps=2", "logger=none", f"data.dir={data}", "data.val_images=1", "train.steps=2",
                 "train.batch_size=2", "train.lr=1e-3"]  # fmt: skip
    train_run(compose(*overrides), tmp_path / "run", notify=lambda *_: None)
    out = tmp_path / "scores.json"
    proc = cli(["-m", "sdexp.cli", "eval", str(tmp_path / "run"), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["base", "final"]
    assert rows[1]["metrics"]["eval/clip_i"] != rows[0]["metrics"]["eval/clip_i"]
