"""Masked training end to end: the mask reaches the loss of every method and family, through
buckets, flips and the latent cache; and on tiny_shapes a mask over the subject keeps the background
of generated images closer to the base than training without it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from sdexp.entry import compose_run_config
from sdexp.run import train_run

pytestmark = pytest.mark.usefixtures("one_thread")

BUCKETS = [
    "data.buckets.enabled=true",
    "data.buckets.min_resolution=32",
    "data.buckets.max_resolution=128",
    "data.buckets.step=16",
]


def _masks(folder: Path, value: int) -> None:
    """A uniform mask (0 = black, 255 = white) beside every image of ``folder``."""
    for image in sorted(folder.glob("*.png")):
        if not image.stem.endswith(".mask"):
            with Image.open(image) as img:
                Image.new("L", img.size, value).save(image.with_name(f"{image.stem}.mask.png"))


def _config(images, tmp_path, *extra):
    return compose_run_config(
        [
            "model=tiny",
            "eval=none",
            "logger=none",
            f"data.dir={images}",
            "data.prompt=a photo of sks toy",
            "data.flip=true",
            "data.val_images=1",
            "data.cache.latents=true",
            f"data.cache.dir={tmp_path / 'cache'}",
            "train.steps=3",
            "train.batch_size=2",
            "train.weight_decay=0",  # so that zero gradients leave every weight where it was
            *BUCKETS,
            *extra,
        ]
    )


def _rows(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(run_dir, key="train/loss") -> list[float]:
    return [r[key] for r in _rows(run_dir) if key in r]


def test_white_masks_change_nothing_and_black_ones_teach_nothing(tmp_path, toy_images):
    """All-white masks train exactly as no masks (the weighted mean is over pixels, not weights);
    all-black masks with unmasked_weight=0 give a zero loss and leave the LoRA at its start (the
    up-projections stay zero). Buckets, flips and cached latents are on: the masks of cached items
    are fitted without decoding their images."""
    from safetensors.torch import load_file

    plain = train_run(_config(toy_images, tmp_path), tmp_path / "plain", notify=lambda *_: None)
    _masks(toy_images, 255)
    white = train_run(_config(toy_images, tmp_path), tmp_path / "white", notify=lambda *_: None)
    assert _losses(white.run_dir) == _losses(plain.run_dir) and len(_losses(plain.run_dir)) == 3
    info = json.loads((white.run_dir / "run.json").read_text())["data"]
    assert info["masked_images"] == 6 and info["cache"]["latents_from_cache"] > 0

    _masks(toy_images, 0)
    black = train_run(_config(toy_images, tmp_path), tmp_path / "black", notify=lambda *_: None)
    assert _losses(black.run_dir) == [0.0, 0.0, 0.0]
    assert _losses(black.run_dir, "val/loss")[-1] > 0  # the validation loss is unmasked
    lora = load_file(black.run_dir / "checkpoints" / "final" / "lora.safetensors")
    ups = [v for k, v in lora.items() if "lora_up" in k]
    assert ups and all((v == 0).all() for v in ups)
    grey = train_run(
        _config(toy_images, tmp_path, "data.mask.unmasked_weight=0.5"),
        tmp_path / "grey",
        notify=lambda *_: None,
    )
    assert _losses(grey.run_dir)[0] == pytest.approx(0.5 * _losses(plain.run_dir)[0], rel=1e-5)


def test_dreambooth_class_images_are_unmasked(tmp_path, toy_images):
    from toy_images import write_demo_images

    classes = write_demo_images(tmp_path / "classes", n=2, seed=1)
    _masks(toy_images, 0)
    cfg = _config(
        toy_images,
        tmp_path,
        "method=dreambooth",
        "method.instance_prompt=a photo of sks toy",
        "method.class_prompt=a photo of toy",
        f"method.class_dir={classes}",
        "method.num_class_images=2",
        "data.buckets.enabled=false",
    )
    run = train_run(cfg, tmp_path / "db", notify=lambda *_: None)
    rows = [r for r in _rows(run.run_dir) if "train/prior_loss" in r]
    assert rows and all(r["train/instance_loss"] == 0.0 and r["train/prior_loss"] > 0 for r in rows)


@pytest.mark.parametrize(
    "extra",
    [["model=tiny_sdxl"], ["method=finetune", "method.ema_decay=0"]],
    ids=["sdxl", "full-finetune"],
)
def test_masks_reach_the_loss_of_every_family_and_method(tmp_path, toy_images, extra):
    _masks(toy_images, 0)
    run = train_run(_config(toy_images, tmp_path, *extra), tmp_path / "run", notify=lambda *_: None)
    assert _losses(run.run_dir) == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------- tiny_shapes: the background


def _star_on_a_wall(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` striped stars (the concept) on one textured wall the base world never shows (diagonal
    orange/black bands), each with the exact star mask: what masked training is for (learn the
    subject, not the room it was photographed in)."""
    from sdexp.world.shapes import SUPERSAMPLE, _draw_shape, render_concept

    folder.mkdir(parents=True)
    rng = random.Random(seed)
    big = 64 * SUPERSAMPLE
    wall = Image.new("RGB", (big, big), (245, 140, 20))
    draw = ImageDraw.Draw(wall)
    for k in range(-big, big, 48):
        draw.polygon([(k, 0), (k + 24, 0), (k + 24 + big, big), (k + big, big)], fill=(15, 15, 15))
    wall = wall.resize((64, 64), Image.Resampling.BOX)
    for i in range(n):
        cx, cy, r = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), rng.uniform(0.26, 0.32)
        mask = Image.new("L", (big, big), 0)
        _draw_shape(ImageDraw.Draw(mask), "star", cx * big, cy * big, r * big, 255, 0)
        mask = mask.resize((64, 64), Image.Resampling.BOX)  # the star's exact (anti-aliased) outline
        star = render_concept("striped_star", "white", cx, cy, r)
        Image.composite(star, wall, mask).save(folder / f"{i:03d}.png")
        mask.save(folder / f"{i:03d}.mask.png")
    return folder


def _corners(img) -> list[tuple[int, int, int]]:
    """The pixels of the four 12x12 corners of a 64 px image: background in every shapes-world
    image (a shape's centre stays within 0.5 ± 0.12 and its radius under 0.36)."""
    size = 12
    px = img.load()
    return [
        px[x, y]
        for x0, y0 in ((0, 0), (64 - size, 0), (0, 64 - size), (64 - size, 64 - size))
        for y in range(y0, y0 + size)
        for x in range(x0, x0 + size)
    ]


def _background_change(images, base_images) -> float:
    """Mean absolute difference (0..255) of the corners' pixels, image for image."""
    total = count = 0
    for a, b in zip(images, base_images, strict=True):
        for pa, pb in zip(_corners(a.convert("RGB")), _corners(b.convert("RGB")), strict=True):
            total += sum(abs(x - y) for x, y in zip(pa, pb, strict=True))
            count += 3
    return total / count


@pytest.mark.slow
def test_a_subject_mask_keeps_the_background_of_generations_near_the_base(tmp_path):
    """Eight striped stars on a striped wall, captioned "a red star on a blue background", LoRA,
    same steps, learning rate and seed with and without the stars' masks; generated from the
    training prompt. The prompt's words are all known to the base, so its background (blue) is a
    stable reference: with an unknown token the base's background for the prompt is already
    uncertain and flips with any change to the weights, masked or not."""
    from sdexp.base_generations import SamplingSettings, generate_images, sampling_pipeline

    data = _star_on_a_wall(tmp_path / "data", 8)
    prompt = "a red star on a blue background"
    common = [
        "model=tiny_shapes",
        "eval=none",
        "logger=none",
        f"data.dir={data}",
        f"data.prompt={prompt}",
        "data.val_images=1",
        "method.rank=8",
        "train.steps=40",
        "train.lr=3e-4",
        "train.batch_size=4",
        "train.seed=0",
    ]
    seeds = list(range(8))
    settings = SamplingSettings(steps=10, guidance=4.0)

    def generations(lora):
        pipe, _ = sampling_pipeline("tiny_shapes", lora=lora)
        return generate_images(pipe, [prompt] * len(seeds), seeds, settings, 64)

    base = generations(None)
    change = {}
    for masked in (False, True):
        cfg = compose_run_config([*common, f"data.mask.enabled={str(masked).lower()}"])
        run = train_run(cfg, tmp_path / f"masked-{masked}", notify=lambda *_: None)
        lora = run.run_dir / "checkpoints" / "final" / "lora.safetensors"
        change[masked] = _background_change(generations(lora), base)
    print(
        f"background change from the base (0..255): unmasked {change[False]:.1f}, masked {change[True]:.1f}"
    )
    # measured (seed 0, CPU): unmasked 122.0, masked 2.8 (at 30 and 45 steps: 134.6/1.2, 115.2/3.9)
    assert change[False] > 40, change  # without the mask the wall is learned
    assert change[True] < 0.25 * change[False], change
