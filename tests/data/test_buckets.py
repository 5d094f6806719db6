"""Aspect-ratio buckets: the bucket list, assignment, the crop they imply, batching, validation."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sdexp.data.buckets import BucketBatchSampler, assign_bucket, check_bucket_options, make_buckets
from sdexp.data.dataset import ImageCaptionDataset, collate, load_dataset
from sdexp.data.options import BucketOptions
from sdexp.data.scan import ImageRecord
from sdexp.data.transforms import resize_scale
from sdexp.errors import ConfigError, UserError

ON = BucketOptions(enabled=True)  # kohya's defaults: 256..1024, step 64


def test_buckets_are_maximal_step_multiples_within_area_and_bounds():
    buckets = make_buckets(512, ON)
    assert (512, 512) in buckets and (704, 320) in buckets and (320, 704) in buckets
    assert len(set(buckets)) == len(buckets)
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0
        assert 256 <= w <= 1024 and 256 <= h <= 1024
        assert w * h <= 512 * 512
        assert (h, w) in buckets  # portrait and landscape alike
        taller_fits = h < 1024 and w * (h + 64) <= 512 * 512
        wider_fits = w < 1024 and (w + 64) * h <= 512 * 512
        assert not (taller_fits and wider_fits) or (w, h) == (512, 512)  # maximal along one side
    ratios = [w / h for w, h in buckets]
    assert ratios == sorted(ratios)
    narrow = make_buckets(512, BucketOptions(enabled=True, min_resolution=384, max_resolution=640))
    assert min(min(b) for b in narrow) >= 384 and max(max(b) for b in narrow) <= 640


@pytest.mark.parametrize(
    ("options", "resolution", "key"),
    [
        (BucketOptions(step=60), None, "data.buckets.step"),
        (BucketOptions(step=0), None, "data.buckets.step"),
        (BucketOptions(min_resolution=300), None, "data.buckets.min_resolution"),
        (BucketOptions(min_resolution=1024, max_resolution=512), None, "data.buckets.min_resolution"),
        (BucketOptions(enabled=True), 2048, "data.buckets"),
        (BucketOptions(enabled=True), 128, "data.buckets"),
    ],
)
def test_bad_bucket_options_name_the_key(options, resolution, key):
    with pytest.raises(ConfigError, match="^" + re.escape(key) + "[:.]"):
        check_bucket_options(options, resolution)
    check_bucket_options(BucketOptions(enabled=False), 2048)  # bounds only matter when enabled


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.buckets.step=60", "data.buckets.step"),
        ("data.pad_color=[0,0,300]", "data.pad_color"),
        ("data.pad_color=[0,0]", "data.pad_color"),
        ("data.small_images=big", "data.small_images"),
        ("data.crop=left", "data.crop"),
    ],
)
def test_config_validation_names_the_data_key(compose, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose(override)


def test_config_accepts_the_new_data_keys(compose):
    cfg = compose(
        "data.crop=none",
        "data.pad_color=[255,255,255]",
        "data.small_images=skip",
        "data.buckets.enabled=true",
    )
    assert (cfg.data.crop, cfg.data.pad_color, cfg.data.small_images) == ("none", [255, 255, 255], "skip")
    assert cfg.data.buckets.enabled


def test_nearest_aspect_ratio_and_portrait_symmetry():
    buckets = make_buckets(512, ON)
    assert assign_bucket(1000, 1000, buckets, ON) == (512, 512)
    assert assign_bucket(1024, 512, buckets, ON) == (704, 320)  # 2.2: the nearest to 2.0 in the list
    assert assign_bucket(512, 1024, buckets, ON) == (320, 704)
    assert assign_bucket(4000, 100, buckets, ON) == (1024, 256)  # beyond the range: the widest bucket


def per_side_loss(width, height, bucket):
    """Pixels (of the resized image) cropped away on each side of the longer-than-bucket axis."""
    scale = resize_scale(width, height, bucket, "center")
    return max(width * scale - bucket[0], height * scale - bucket[1]) / 2


def test_a_2to1_image_loses_less_than_a_step_per_side():
    buckets = make_buckets(512, ON)
    bucket = assign_bucket(1200, 600, buckets, ON)
    assert abs(math.log(bucket[0] / bucket[1] / 2)) < 0.1
    assert per_side_loss(1200, 600, bucket) < 64
    square_crop_loss = (1200 * 512 / 600 - 512) / 2  # what a 512 square crop would cut: 256 px a side
    assert per_side_loss(1200, 600, bucket) < square_crop_loss / 4


def test_any_aspect_within_the_bucket_range_loses_less_than_a_step_per_side():
    buckets = make_buckets(512, ON)
    lo, hi = math.log(256 / 1024), math.log(1024 / 256)
    for k in range(301):
        ratio = math.exp(lo + (hi - lo) * k / 300)
        w, h = round(2000 * ratio), 2000
        assert per_side_loss(w, h, assign_bucket(w, h, buckets, ON)) < 64, ratio


def test_no_upscale_gives_small_images_their_own_rounded_size():
    options = BucketOptions(enabled=True, no_upscale=True)
    buckets = make_buckets(512, options)
    assert assign_bucket(300, 200, buckets, options, resolution=512) == (256, 192)
    assert assign_bucket(100, 40, buckets, options, resolution=512) == (64, 64)  # never below one step
    assert assign_bucket(2000, 100, buckets, options, resolution=512) == (1024, 64)  # max side kept
    assert assign_bucket(1200, 600, buckets, options, resolution=512) == (704, 320)  # large: from the list
    for w, h in [(300, 200), (333, 517), (511, 511), (130, 400)]:
        bw, bh = assign_bucket(w, h, buckets, options, resolution=512)
        assert bw <= w and bh <= h and w - bw < 64 and h - bh < 64
        assert resize_scale(w, h, (bw, bh), "center") <= 1.0  # never enlarged


def save(img: Image.Image, path) -> ImageRecord:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return ImageRecord(path, path.stem, img.width, img.height)


def gradient(size) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size)
    img.putdata([(x * 255 // w, y * 255 // h, 128) for y in range(h) for x in range(w)])
    return img


def test_dataset_items_have_their_bucket_size_and_only_the_rounding_cropped(tmp_path):
    options = BucketOptions(enabled=True, min_resolution=16, max_resolution=128, step=16)
    records = [
        save(gradient((200, 100)), tmp_path / "wide.png"),
        save(gradient((60, 90)), tmp_path / "tall.png"),
    ]
    ds = ImageCaptionDataset(records, resolution=64, buckets=options)
    wide, tall = ds[0], ds[1]
    (bw, bh), (tw, th) = ds.buckets_per_item
    assert bw / bh > 1.6 and th / tw > 1.3
    assert wide["pixel_values"].shape == (3, bh, bw) and tall["pixel_values"].shape == (3, th, tw)
    assert wide["original_size"] == (100, 200) and tall["original_size"] == (90, 60)
    top, left = wide["crop_top_left"]
    assert top == 0 and 0 <= left < 16 / 2 + 1  # centre crop of the rounding remainder only
    # the gradient's range nearly survives; a square crop would keep only its middle half
    red = wide["pixel_values"][0, bh // 2]
    assert red[0] < -0.8 and red[-1] > 0.8
    square = ImageCaptionDataset(records, resolution=64)[0]["pixel_values"][0, 32]
    assert square[0] > -0.6 and square[-1] < 0.6


def test_dataset_without_buckets_uses_the_square():
    ds = ImageCaptionDataset([ImageRecord("x.png", "c", 300, 100)], resolution=32)
    assert ds.buckets_per_item == [(32, 32)]


def test_sampler_batches_hold_one_bucket_and_every_index_its_repeats():
    sizes = [(64, 32)] * 5 + [(32, 32)] * 4 + [(32, 64)] * 1
    repeats = [1, 2, 1, 1, 3, 1, 1, 1, 2, 1]
    sampler = BucketBatchSampler(sizes, 2, seed=3, repeats=repeats)
    batches = list(sampler)
    assert len(batches) == len(sampler) == math.ceil(8 / 2) + math.ceil(5 / 2) + 1
    for batch in batches:
        assert len({sizes[i] for i in batch}) == 1 and 1 <= len(batch) <= 2
    assert Counter(i for b in batches for i in b) == dict(enumerate(repeats))

    dropping = BucketBatchSampler(sizes, 2, seed=3, repeats=repeats, drop_last=True)
    kept = list(dropping)
    assert len(kept) == len(dropping) == 4 + 2 + 0 and all(len(b) == 2 for b in kept)


def test_sampler_order_depends_on_seed_and_epoch_only():
    sizes = [(64, 32), (32, 32)] * 20
    a, b = BucketBatchSampler(sizes, 4, seed=1), BucketBatchSampler(sizes, 4, seed=1)
    assert list(a) == list(b) == list(a)  # deterministic, repeatable
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(map(sorted, a)) != []
    assert sorted(i for batch in a for i in batch) == sorted(i for batch in first for i in batch)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(BucketBatchSampler(sizes, 4, seed=2)) != first


def test_sampler_rejects_bad_arguments():
    with pytest.raises(UserError, match="batch_size"):
        BucketBatchSampler([(8, 8)], 0, seed=0)
    with pytest.raises(ValueError, match="repeats"):
        BucketBatchSampler([(8, 8)], 1, seed=0, repeats=[1, 1])
    with pytest.raises(UserError, match="no bucket holds a full batch of 4"):
        BucketBatchSampler([(8, 8), (16, 8)], 4, seed=0, drop_last=True)


def test_bucketed_dataloader_end_to_end(tmp_path):
    for i, size in enumerate([(80, 40), (82, 41), (40, 80), (50, 50), (84, 40)]):
        save(gradient(size), tmp_path / f"{i}.png")
    options = BucketOptions(enabled=True, min_resolution=16, max_resolution=96, step=16)
    ds = load_dataset(tmp_path, resolution=48, default_prompt="p", buckets=options, crop="random", flip=True)
    sampler = BucketBatchSampler(ds.buckets_per_item, 2, seed=0)
    batches = list(DataLoader(ds, batch_sampler=sampler, collate_fn=collate))
    assert sum(len(b["path"]) for b in batches) == 5
    for batch in batches:
        n, _, h, w = batch["pixel_values"].shape
        assert batch["original_size"].shape == (n, 2) and batch["crop_top_left"].dtype == torch.long
        assert all(ds.buckets_per_item[int(p.split("/")[-1][0])] == (w, h) for p in batch["path"])
