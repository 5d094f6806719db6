"""Tests for image loading (EXIF, colour modes), cropping, tensor conversion and the dataset."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sdexp.data.dataset import ImageCaptionDataset, collate, item_rng, load_dataset
from sdexp.data.scan import ImageRecord, scan_folder
from sdexp.data.transforms import load_rgb, resize_and_crop, to_tensor
from sdexp.errors import UserError

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def asymmetric_image(size=(48, 32)) -> Image.Image:
    """Every pixel distinct-ish: horizontal and vertical gradients, so crops and flips are visible."""
    w, h = size
    img = Image.new("RGB", size)
    img.putdata([(x * 255 // w, y * 255 // h, (x * 7 + y * 13) % 256) for y in range(h) for x in range(w)])
    return img


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def folder_state(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    } | {str(p.relative_to(root)) + "/": ("dir", p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_dir()}


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), RED)
    img.paste(BLUE, (20, 0, 40, 20))  # left half red, right half blue as stored
    exif = img.getexif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    path = save(img, tmp_path / "rot.jpg", exif=exif, quality=95)

    loaded = load_rgb(path)

    assert loaded.size == (20, 40)
    top, bottom = loaded.getpixel((10, 5)), loaded.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # stored left edge is now the top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize(
    ("mode", "fill", "ext", "expected"),
    [
        ("L", 128, "png", (128, 128, 128)),
        ("1", 1, "png", WHITE),
        ("P", None, "png", RED),
        ("RGBA", (0, 0, 0, 0), "png", WHITE),  # fully transparent black -> white, not black
        ("RGBA", (255, 0, 0, 255), "png", RED),
        ("LA", (0, 0), "png", WHITE),
        ("CMYK", (0, 0, 0, 0), "jpg", WHITE),
        ("I;16", 32896, "png", (128, 128, 128)),  # scaled down, not clipped to white
        ("RGB", BLUE, "webp", BLUE),
    ],
)
def test_any_mode_becomes_rgb(tmp_path, mode, fill, ext, expected):
    if mode == "P":
        img = Image.new("RGB", (12, 10), RED).convert("P")
    else:
        img = Image.new(mode, (12, 10), fill)
    path = save(img, tmp_path / f"img.{ext}", **({"lossless": True} if ext == "webp" else {}))

    loaded = load_rgb(path)
    tensor = to_tensor(loaded)

    assert loaded.mode == "RGB" and loaded.size == (12, 10)
    assert all(abs(a - b) <= 3 for a, b in zip(loaded.getpixel((5, 5)), expected, strict=True))
    assert tensor.shape == (3, 10, 12) and tensor.dtype == torch.float32


def test_palette_transparency_composited_on_white(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 4, 8))  # left half red, right half index 0 (black, transparent)
    path = save(img, tmp_path / "p.png", transparency=0)
    loaded = load_rgb(path)
    assert loaded.getpixel((1, 4)) == RED
    assert loaded.getpixel((6, 4)) == WHITE


def test_to_tensor_range_and_values():
    img = Image.new("RGB", (2, 1))
    img.putdata([(0, 0, 0), (255, 255, 255)])
    t = to_tensor(img)
    assert t.shape == (3, 1, 2)
    assert torch.equal(t[:, 0, 0], torch.full((3,), -1.0))
    assert torch.equal(t[:, 0, 1], torch.full((3,), 1.0))
    with pytest.raises(ValueError):
        to_tensor(Image.new("L", (2, 2)))


@pytest.mark.parametrize(("size", "offset"), [((64, 32), (0, 8)), ((30, 90), (16, 0)), ((20, 20), (0, 0))])
def test_center_crop_non_square(size, offset):
    out, crop_offset = resize_and_crop(asymmetric_image(size), 16, "center", random.Random(0))
    assert out.size == (16, 16)
    assert crop_offset == offset


def test_center_crop_keeps_the_middle():
    img = Image.new("RGB", (90, 30), RED)
    img.paste(BLUE, (30, 0, 60, 30))  # red | blue | red
    out, _ = resize_and_crop(img, 30, "center", random.Random(0))
    assert out.size == (30, 30)
    assert out.getpixel((15, 15)) == BLUE and out.getpixel((1, 1)) == BLUE


def test_random_crop_offsets_come_from_rng():
    img = asymmetric_image((80, 20))
    offsets = {resize_and_crop(img, 20, "random", random.Random(s))[1] for s in range(20)}
    assert all(top == 0 and 0 <= left <= 60 for top, left in offsets)
    assert len(offsets) > 5
    first, second = (resize_and_crop(img, 20, "random", random.Random(3)) for _ in range(2))
    assert first[1] == second[1] and first[0].tobytes() == second[0].tobytes()


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"crop": "middle"}, "data.crop"), ({"resolution": 0}, "resolution")]
)
def test_invalid_crop_or_resolution_is_user_error(tmp_path, kwargs, match):
    save(asymmetric_image(), tmp_path / "a.png")
    args = {"resolution": 16, "crop": "center"} | kwargs
    with pytest.raises(UserError, match=match):
        load_dataset(tmp_path, default_prompt="x", **args)
    with pytest.raises(UserError, match=match):
        ImageCaptionDataset([], **args)
    with pytest.raises(UserError, match=match):
        resize_and_crop(asymmetric_image(), args["resolution"], args["crop"], random.Random(0))


def test_dataset_items_shape_range_and_caption(tmp_path):
    save(asymmetric_image((48, 32)), tmp_path / "wide.png")
    save(asymmetric_image((20, 50)), tmp_path / "tall.jpg")
    (tmp_path / "tall.txt").write_text("a tall one")
    ds = load_dataset(tmp_path, resolution=24, default_prompt="default")

    assert len(ds) == 2
    items = [ds[0], ds[1]]
    assert [i["caption"] for i in items] == ["a tall one", "default"]
    assert [Path(i["path"]).name for i in items] == ["tall.jpg", "wide.png"]
    for item in items:
        px = item["pixel_values"]
        assert px.shape == (3, 24, 24) and px.dtype == torch.float32
        assert px.min() >= -1.0 and px.max() <= 1.0 and px.max() - px.min() > 0.5
    assert torch.equal(ds[-1]["pixel_values"], items[1]["pixel_values"])
    with pytest.raises(IndexError):
        ds[2]


def test_collate_and_dataloader(tmp_path):
    for i in range(3):
        save(asymmetric_image((40 + i, 30)), tmp_path / f"{i}.png")
    ds = load_dataset(tmp_path, resolution=16, default_prompt="p", crop="random", flip=True)
    batches = list(DataLoader(ds, batch_size=2, collate_fn=collate))
    assert [b["pixel_values"].shape for b in batches] == [(2, 3, 16, 16), (1, 3, 16, 16)]
    assert batches[0]["caption"] == ["p", "p"]
    assert [Path(p).name for b in batches for p in b["path"]] == ["0.png", "1.png", "2.png"]
    assert torch.equal(batches[1]["pixel_values"][0], ds[2]["pixel_values"])


def _dataset(tmp_path, **kwargs) -> ImageCaptionDataset:
    path = tmp_path / "asym.png"
    if not path.exists():
        save(asymmetric_image((64, 32)), path)
    return ImageCaptionDataset(scan_folder(tmp_path, default_prompt="x"), resolution=16, **kwargs)


def test_random_crop_and_flip_deterministic_per_seed_and_epoch(tmp_path):
    a = _dataset(tmp_path, crop="random", flip=True, seed=7)
    b = _dataset(tmp_path, crop="random", flip=True, seed=7)
    for epoch in (0, 3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert torch.equal(a[0]["pixel_values"], b[0]["pixel_values"])
        assert torch.equal(a[0]["pixel_values"], a[0]["pixel_values"])  # repeatable within an epoch

    per_epoch = []
    for epoch in range(8):
        a.set_epoch(epoch)
        per_epoch.append(a[0]["pixel_values"])
    assert not torch.equal(per_epoch[0], per_epoch[1])
    assert len({t.numpy().tobytes() for t in per_epoch}) > 3

    other_seed = _dataset(tmp_path, crop="random", flip=True, seed=8)
    differs = []
    for epoch in range(8):
        other_seed.set_epoch(epoch)
        differs.append(not torch.equal(other_seed[0]["pixel_values"], per_epoch[epoch]))
    assert any(differs)


def test_flip_is_horizontal_and_roughly_half_the_time(tmp_path):
    plain = _dataset(tmp_path, crop="center", flip=False)[0]["pixel_values"]
    ds = _dataset(tmp_path, crop="center", flip=True)
    flipped = 0
    for epoch in range(40):
        ds.set_epoch(epoch)
        px = ds[0]["pixel_values"]
        if torch.equal(px, plain):
            continue
        assert torch.equal(px, torch.flip(plain, dims=[2]))
        flipped += 1
    assert 8 <= flipped <= 32


def test_item_rng_is_stable_across_processes():
    # pinned value (same under any PYTHONHASHSEED): if it changes, every run's augmentation stream changes
    assert item_rng(1, 2, 3).random() == 0.8916491535144135
    assert item_rng(1, 2, 3).random() != item_rng(1, 3, 2).random()


def test_scanning_and_iterating_never_touch_the_data_folder(tmp_path):
    data = tmp_path / "data"
    save(asymmetric_image((40, 30)), data / "a.png")
    rot = Image.new("RGB", (40, 20), RED)
    exif = rot.getexif()
    exif[0x0112] = 6
    save(rot, data / "sub" / "b.jpg", exif=exif)
    save(Image.new("RGBA", (30, 30), (0, 0, 0, 0)), data / "c.png")
    (data / "a.txt").write_text("caption a")
    (data / "broken.png").write_bytes(b"not an image at all")
    before = folder_state(data)

    scan_folder(data, default_prompt="x", skip_bad=True, warn=lambda _: None)
    ds = load_dataset(
        data, resolution=16, default_prompt="x", crop="random", flip=True, skip_bad=True, warn=lambda _: None
    )
    for epoch in range(2):
        ds.set_epoch(epoch)
        for batch in DataLoader(ds, batch_size=2, collate_fn=collate):
            assert batch["pixel_values"].shape[1:] == (3, 16, 16)

    assert folder_state(data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_file_removed_after_scan_is_user_error(tmp_path):
    path = save(asymmetric_image(), tmp_path / "gone.png")
    ds = ImageCaptionDataset([ImageRecord(path, "c", 48, 32)], resolution=16)
    path.unlink()
    with pytest.raises(UserError, match="gone.png"):
        ds[0]


# ---------------------------------------------------------------- crop none (pad), small images, placement


def test_crop_none_fits_inside_and_pads_with_the_colour():
    img = Image.new("RGB", (60, 30), BLUE)
    out, offset = resize_and_crop(img, 20, "none", random.Random(0), pad_color=(255, 0, 255))
    assert out.size == (20, 20) and offset == (0, 0)
    assert out.getpixel((10, 10)) == BLUE  # the whole image, 20x10, in the middle
    assert out.getpixel((0, 0)) == out.getpixel((19, 19)) == (255, 0, 255)  # bands above and below
    assert out.getpixel((0, 5)) == BLUE and out.getpixel((19, 14)) == BLUE  # nothing cut at the sides


def test_crop_none_in_the_dataset_uses_data_pad_color(tmp_path):
    save(Image.new("RGB", (20, 60), RED), tmp_path / "tall.png")
    ds = load_dataset(tmp_path, resolution=30, default_prompt="x", crop="none", pad_color=[0, 255, 0])
    px = ds[0]["pixel_values"]
    assert px.shape == (3, 30, 30)
    assert torch.equal(px[:, 15, 0], torch.tensor([-1.0, 1.0, -1.0]))  # green band at the left
    assert torch.equal(px[:, 15, 15], torch.tensor([1.0, -1.0, -1.0]))  # red image in the middle
    with pytest.raises(UserError, match="data.pad_color"):
        load_dataset(tmp_path, resolution=30, default_prompt="x", crop="none", pad_color=[0, 256, 0])


def test_items_carry_original_size_and_crop_offset_for_sdxl(tmp_path):
    save(asymmetric_image((64, 32)), tmp_path / "a.png")
    ds = load_dataset(tmp_path, resolution=16, default_prompt="x", crop="center")
    item = ds[0]
    assert item["original_size"] == (32, 64) and item["crop_top_left"] == (0, 8)
    batch = collate([item, item])
    assert batch["original_size"].tolist() == [[32, 64]] * 2 and batch["crop_top_left"].dtype == torch.long


def test_flip_mirrors_the_crop_offset(tmp_path):
    save(asymmetric_image((64, 16)), tmp_path / "a.png")  # resized to 64x16 -> crop 16 of 64
    plain = load_dataset(tmp_path, resolution=16, default_prompt="x", crop="random", seed=1)
    flipping = load_dataset(tmp_path, resolution=16, default_prompt="x", crop="random", flip=True, seed=1)
    mirrored = 0
    for epoch in range(12):
        plain.set_epoch(epoch)
        flipping.set_epoch(epoch)
        a, b = plain[0], flipping[0]
        if torch.equal(a["pixel_values"], b["pixel_values"]):
            assert a["crop_top_left"] == b["crop_top_left"]
        else:
            assert torch.equal(torch.flip(a["pixel_values"], dims=[2]), b["pixel_values"])
            assert b["crop_top_left"] == (0, 64 - a["crop_top_left"][1] - 16)
            mirrored += 1
    assert mirrored > 0


def test_extreme_aspect_ratio_never_builds_a_huge_intermediate():
    img = Image.new("RGB", (2, 3000), RED)  # covering 512 px would mean a 512 x 768000 image
    out, (top, left) = resize_and_crop(img, 512, "center", random.Random(0))
    assert out.size == (512, 512) and left == 0 and top == (768000 - 512) // 2
    assert out.getpixel((256, 256)) == RED


@pytest.mark.parametrize(
    ("policy", "kept", "warned"), [("upscale", 2, False), ("warn", 2, True), ("skip", 1, True)]
)
def test_small_image_policy(tmp_path, policy, kept, warned):
    save(asymmetric_image((40, 30)), tmp_path / "big.png")
    save(asymmetric_image((20, 12)), tmp_path / "small.png")  # 12 px short side < 24
    messages: list[str] = []
    ds = load_dataset(tmp_path, resolution=24, default_prompt="x", small_images=policy, warn=messages.append)
    assert len(ds) == kept
    assert bool(messages) == warned
    if warned:
        assert "small.png" in messages[0] and "x2.00" in messages[0]
    if policy == "skip":
        assert [Path(r.path).name for r in ds.records] == ["big.png"]


def test_small_image_skip_that_leaves_nothing_is_an_error(tmp_path):
    save(asymmetric_image((20, 12)), tmp_path / "small.png")
    with pytest.raises(UserError, match="data.small_images=skip leaves none"):
        load_dataset(tmp_path, resolution=24, default_prompt="x", small_images="skip", warn=lambda _: None)
    with pytest.raises(UserError, match="data.small_images"):
        load_dataset(tmp_path, resolution=24, default_prompt="x", small_images="never")


def test_collate_refuses_mixed_sizes_with_a_hint():
    a = {"pixel_values": torch.zeros(3, 8, 8), "caption": "a", "path": "a"}
    b = {"pixel_values": torch.zeros(3, 8, 16), "caption": "b", "path": "b"}
    with pytest.raises(ValueError, match="BucketBatchSampler"):
        collate([a, b])


def test_item_can_be_fitted_to_another_items_size(tmp_path):
    save(asymmetric_image((40, 30)), tmp_path / "a.png")
    ds = load_dataset(tmp_path, resolution=16, default_prompt="x")
    assert ds.item(0, target=(24, 8))["pixel_values"].shape == (3, 8, 24)
    assert torch.equal(ds.item(0)["pixel_values"], ds[0]["pixel_values"])
