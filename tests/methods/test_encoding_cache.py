"""data.cache: cached and uncached training see the same latents and losses, flips cache both
orientations, and a sweep's trials share one encoding of each image."""

from __future__ import annotations

import json

import pytest
import yaml

from sdexp.data.cache import TensorCache, entry_key
from sdexp.entry import compose_run_config
from sdexp.run import train_run

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(images, cache_dir, *extra):
    return compose_run_config(
        [
            "model=tiny",
            "eval=none",
            "logger=none",
            f"data.dir={images}",
            "data.prompt=a photo of sks toy",
            "data.flip=true",
            "data.val_images=2",
            f"data.cache.dir={cache_dir}",
            "train.steps=8",
            "train.batch_size=2",
            "train.checkpoint_every=4",
            *extra,
        ]
    )


def _losses(run_dir) -> list[float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in lines if "train/loss" in r]


def _val(run_dir) -> list[float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["val/loss"] for r in lines if "val/loss" in r]


def test_cached_training_equals_uncached_and_the_second_run_encodes_nothing(tmp_path, toy_images):
    cache = tmp_path / "cache"
    plain = train_run(_config(toy_images, cache), tmp_path / "plain", notify=lambda *_: None)
    cold = train_run(
        _config(toy_images, cache, "data.cache.latents=true", "data.cache.text=true"),
        tmp_path / "cold",
        notify=lambda *_: None,
    )
    warm = train_run(
        _config(toy_images, cache, "data.cache.latents=true", "data.cache.text=true"),
        tmp_path / "warm",
        notify=lambda *_: None,
    )
    reference = _losses(plain.run_dir)
    assert len(reference) == 8
    for run in (cold, warm):
        assert _losses(run.run_dir) == pytest.approx(reference, rel=1e-5, abs=1e-6)
        assert _val(run.run_dir) == pytest.approx(_val(plain.run_dir), rel=1e-5, abs=1e-6)
    stats = {
        name: json.loads((tmp_path / name / "run.json").read_text())["data"]["cache"]
        for name in ("cold", "warm")
    }
    assert stats["cold"]["latents_encoded"] > 0
    assert stats["warm"]["latents_encoded"] == 0  # every latent, training and validation, from disk
    assert (
        stats["warm"]["latents_from_cache"]
        == stats["cold"]["latents_encoded"] + stats["cold"]["latents_from_cache"]
    )
    assert stats["warm"]["text_encoded"] == 0 and stats["warm"]["text_from_cache"] > 0
    # 8 steps × 2 images over 6 images is ~3 epochs of flips drawn per epoch: some images have been
    # seen both ways, none more than both ways.
    entries = sum(1 for _ in (cache / "latents").rglob("*.safetensors"))
    assert 6 < entries <= 12


def test_random_crops_are_turned_off_plainly_with_the_latent_cache(tmp_path, toy_images, capsys):
    cfg = _config(
        toy_images, tmp_path / "cache", "data.cache.latents=true", "data.crop=random", "train.steps=2"
    )
    train_run(cfg, tmp_path / "run", notify=lambda *_: None)
    assert "random crops become centre crops" in capsys.readouterr().out


def test_caption_dropout_keeps_the_text_encoder_live(tmp_path, toy_images, capsys):
    cfg = _config(
        toy_images, tmp_path / "cache", "data.cache.text=true", "data.captions.dropout=0.5", "train.steps=2"
    )
    train_run(cfg, tmp_path / "run", notify=lambda *_: None)
    assert "text encoder stays live" in capsys.readouterr().out
    assert not (tmp_path / "cache" / "text").exists()


def test_a_torn_cache_entry_is_a_miss(tmp_path):
    import torch

    cache = TensorCache(tmp_path, "latents", "ns")
    key = entry_key(image="x")
    cache.put(key, torch.ones(2))
    assert torch.equal(cache.get(key), torch.ones(2))
    cache.path(key).write_bytes(b"\x00\x01")
    assert cache.get(key) is None


@pytest.mark.slow
def test_a_sweep_encodes_each_image_once(tmp_path, toy_images):
    from sdexp.sweep.definition import load_definition
    from sdexp.sweep.runner import SweepRunner

    cache = tmp_path / "cache"
    definition = tmp_path / "s.yaml"
    definition.write_text(
        yaml.safe_dump(
            {
                "name": "cache",
                "overrides": [
                    "model=tiny",
                    "eval=none",
                    "logger=none",
                    f"data.dir={toy_images}",
                    "data.prompt=a photo of sks toy",
                    "data.val_images=2",
                    "data.cache.latents=true",
                    f"data.cache.dir={cache}",
                    "train.steps=4",
                    "train.batch_size=4",
                ],
                "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
                "sampler": {"name": "random", "seed": 0},
                "n_trials": 3,
            }
        )
    )
    runner = SweepRunner(load_definition(definition), tmp_path / "sweep", notify=lambda *_: None)
    runner.prepare()
    outcome = runner.run()
    assert outcome.completed == 3
    stats = [
        json.loads(p.read_text())["data"]["cache"]
        for p in sorted((tmp_path / "sweep" / "trials").glob("*/run.json"))
    ]
    assert len(stats) == 3
    assert stats[0]["latents_encoded"] == 6  # 4 steps × 4 = 16 views of 6 images, no flips: 6 encodes
    assert [s["latents_encoded"] for s in stats[1:]] == [0, 0]
    assert sum(1 for _ in (cache / "latents").rglob("*.safetensors")) == 6
