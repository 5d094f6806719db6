"""Loss masks on the data side: found beside the image or in a mask folder, never trained on as
images, fitted by exactly the image's transform (bucket, crop, padding, flip, latent cache), turned
into per-latent-pixel weights, and reported by ``sdexp prepare``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from sdexp.cli import main
from sdexp.data.cache import TensorCache, file_digest, latent_key
from sdexp.data.concept_dataset import ConceptDataset, collate_concepts
from sdexp.data.concepts import Concept
from sdexp.data.dataset import collate, load_dataset
from sdexp.data.masks import MaskRef, attach_masks
from sdexp.data.options import BucketOptions, MaskOptions
from sdexp.data.scan import ImageRecord, find_images, scan_folder
from sdexp.errors import UserError
from sdexp.methods.diffusion import mask_weights, per_sample_loss

SQUARE = (60, 10, 84, 40)  # an off-centre box of a 96x64 picture: a flip moves it
BUCKETS = BucketOptions(enabled=True, min_resolution=32, max_resolution=128, step=16)


def _subject(folder: Path, name: str = "a", size=(96, 64), box=SQUARE) -> Path:
    """Background (0, 128, 0) with a (255, 128, 0) box, and its mask (the box white): the image's red
    channel IS the mask, so after any shared geometric transform the two must still be equal."""
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, (0, 128, 0))
    ImageDraw.Draw(img).rectangle(box, fill=(255, 128, 0))
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    img.save(folder / f"{name}.png")
    mask.save(folder / f"{name}.mask.png")
    (folder / f"{name}.txt").write_text("a box\n")
    return folder / f"{name}.png"


def _channel(pixels: torch.Tensor, c: int) -> torch.Tensor:
    return ((pixels[c] + 1.0) * 127.5).round().to(torch.uint8)


def _epochs_by_flip(ds, index: int = 0) -> dict[bool, int]:
    """An epoch in which item ``index`` is flipped and one in which it is not."""
    found = {}
    for epoch in range(50):
        ds.set_epoch(epoch)
        found.setdefault(ds.transform_of(index)["flip"], epoch)
        if len(found) == 2:
            return found
    raise AssertionError("no flip in 50 epochs")


def test_mask_files_are_never_training_images(tmp_path):
    _subject(tmp_path / "d")
    Image.new("RGB", (64, 64)).save(tmp_path / "d" / "other.MASK.JPG")  # any extension, any case
    assert [p.name for p in find_images(tmp_path / "d")] == ["a.png"]
    records = scan_folder(tmp_path / "d", default_prompt=None)
    assert [r.path.name for r in records] == ["a.png"] and records[0].mask is None  # attached later


def test_bucketed_flipped_mask_lines_up_with_its_image(tmp_path):
    _subject(tmp_path / "d")
    ds = load_dataset(
        tmp_path / "d", resolution=64, flip=True, buckets=BUCKETS, masks=MaskOptions(), warn=print
    )
    assert ds.records[0].mask == MaskRef(tmp_path / "d" / "a.mask.png")
    assert ds.buckets_per_item[0] == (80, 48)  # non-square: 3:2 goes to its nearest bucket
    epochs = _epochs_by_flip(ds)
    masks = {}
    for flipped, epoch in epochs.items():
        ds.set_epoch(epoch)
        item = ds[0]
        mask = item["mask"]
        assert mask.shape == (1, 48, 80) and mask.dtype == torch.uint8
        assert torch.equal(mask[0], _channel(item["pixel_values"], 0))  # white exactly where red is
        assert torch.equal(_channel(item["pixel_values"], 1), torch.full((48, 80), 128, dtype=torch.uint8))
        masks[flipped] = mask
    assert torch.equal(masks[True], masks[False].flip(-1))
    # Where the box lands: source columns 60..84 of 96, mean index 72 (centre 72.5) -> scale 80/96
    # -> centre 60.4, index 59.9; flipped: index 79 - 59.9 = 19.1.
    cols = torch.nonzero(masks[False][0] > 127)[:, 1].float()
    assert abs(cols.mean().item() - 59.9) < 0.5
    cols = torch.nonzero(masks[True][0] > 127)[:, 1].float()
    assert abs(cols.mean().item() - 19.1) < 0.5


def test_padding_is_black_in_the_mask(tmp_path):
    _subject(tmp_path / "d")
    ds = load_dataset(tmp_path / "d", resolution=64, crop="none", pad_color=(0, 0, 255), masks=MaskOptions())
    item = ds[0]
    pad = _channel(item["pixel_values"], 2) == 255  # only the padding is blue
    assert pad.any() and (item["mask"][0][pad] == 0).all()
    assert torch.equal(item["mask"][0], _channel(item["pixel_values"], 0))


def test_alpha_channel_as_mask_lines_up_too(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    img = Image.new("RGBA", (96, 64), (0, 0, 0, 0))  # transparent: composited on white for training
    ImageDraw.Draw(img).rectangle(SQUARE, fill=(0, 255, 0, 255))
    img.save(folder / "a.png")
    Image.new("RGB", (96, 64), (9, 9, 9)).save(folder / "plain.png")  # no alpha: no mask
    with pytest.raises(UserError, match="have no mask"):
        load_dataset(folder, resolution=64, default_prompt="x", masks=MaskOptions(required=True))
    ds = load_dataset(
        folder,
        resolution=64,
        default_prompt="x",
        flip=True,
        buckets=BUCKETS,
        masks=MaskOptions(from_alpha=True),
    )
    assert ds.records[0].mask == MaskRef(folder / "a.png", alpha=True) and ds.records[1].mask is None
    for epoch in _epochs_by_flip(ds).values():
        ds.set_epoch(epoch)
        item = ds[0]
        assert torch.equal(item["mask"][0], 255 - _channel(item["pixel_values"], 2))
    batch = collate([ds[0], ds[1]])
    assert torch.equal(batch["mask"][0], ds[0]["mask"])
    assert (batch["mask"][1] == 255).all()  # an item without a mask learns everywhere


def test_cached_latents_get_the_mask_of_the_same_flip(tmp_path):
    """With the latent cache the image is never decoded; its mask must still follow the flip the
    cached latents were made with."""
    path = _subject(tmp_path / "d")
    _subject(tmp_path / "d", "b", box=(4, 4, 30, 30))
    ds = load_dataset(tmp_path / "d", resolution=64, flip=True, buckets=BUCKETS, masks=MaskOptions())
    concept = Concept("c", tmp_path / "d", "a box", None, None)
    data = ConceptDataset(ds, [0, 0], [concept])
    cache = TensorCache(tmp_path / "cache", "latents", "test")
    data.use_latent_cache(cache)
    seen = {}
    for flipped, epoch in _epochs_by_flip(ds).items():
        data.set_epoch(epoch)
        uncached = data[0]
        seen[flipped] = uncached["mask"]
        assert "pixel_values" in uncached
        cache.put(latent_key(file_digest(path), ds.transform_of(0)), torch.zeros(8, 12, 20))
        cached = data[0]
        assert "latent_params" in cached and "pixel_values" not in cached
        assert torch.equal(cached["mask"], uncached["mask"])
        batch = collate_concepts([cached, data[1]])
        assert batch["mask"].shape == (2, 1, 48, 80) and torch.equal(batch["mask"][0], uncached["mask"])
    assert torch.equal(seen[True], seen[False].flip(-1))


def test_mask_folder_mirrors_the_data_and_is_not_scanned(tmp_path):
    data = tmp_path / "d"
    image = _subject(data / "sub")
    (data / "sub" / "a.mask.png").rename(tmp_path / "keep.png")
    masks = data / "masks"  # inside the data folder: left out of the images
    (masks / "sub").mkdir(parents=True)
    (tmp_path / "keep.png").rename(masks / "sub" / "a.png")
    ds = load_dataset(data, resolution=64, masks=MaskOptions(dir=str(masks)))
    assert [r.path for r in ds.records] == [image]
    assert ds.records[0].mask == MaskRef(masks / "sub" / "a.png")
    with pytest.raises(UserError, match="not a folder"):
        load_dataset(data, resolution=64, masks=MaskOptions(dir=str(tmp_path / "nowhere")))
    off = load_dataset(data, resolution=64, masks=MaskOptions(enabled=False, dir=str(masks)))
    assert [r.path for r in off.records] == [image] and off.records[0].mask is None


def test_bad_masks_fail_before_training(tmp_path):
    image = _subject(tmp_path / "d")
    Image.new("L", (48, 32), 255).save(tmp_path / "d" / "a.mask.png")
    record = ImageRecord(image, "a box", 96, 64)
    with pytest.raises(UserError, match="is 48x32 but its image is 96x64"):
        attach_masks([record], MaskOptions(), root=tmp_path / "d")
    (tmp_path / "d" / "a.mask.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot be read"):
        attach_masks([record], MaskOptions(), root=tmp_path / "d")


def test_latent_weights_and_a_loss_that_ignores_unmasked_pixels():
    mask = torch.zeros(2, 1, 64, 64, dtype=torch.uint8)
    mask[0, :, :, :32] = 255  # item 0: left half learns; item 1 all black
    weights = mask_weights(mask, (16, 16), 0.0)  # factor 4 (tiny_shapes) by area
    assert weights.shape == (2, 1, 16, 16)
    assert (weights[0, :, :, :8] == 1).all() and (weights[0, :, :, 8:] == 0).all() and (weights[1] == 0).all()
    grey = mask_weights(torch.full((1, 1, 64, 64), 51, dtype=torch.uint8), (8, 8), 0.5)
    assert torch.allclose(grey, torch.full_like(grey, 0.5 + 0.5 * 0.2))
    soft = mask_weights(mask, (16, 16), 0.1)
    assert torch.allclose(soft[0, :, :, 8:], torch.tensor(0.1)) and (soft[0, :, :, :8] == 1).all()

    sched = type("S", (), {"config": type("C", (), {"prediction_type": "epsilon"})()})()
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 4, 16, 16, generator=gen, requires_grad=True)
    target = torch.randn(2, 4, 16, 16, generator=gen)
    loss = per_sample_loss(pred, target, torch.zeros(2), sched, None, weights)
    loss.sum().backward()
    grad = pred.grad
    assert (grad[0, :, :, 8:] == 0).all() and (grad[1] == 0).all()  # nothing learned from black pixels
    assert (grad[0, :, :, :8] != 0).all()
    # Normalised by the pixel count, not the weight sum: a white pixel's gradient is the unmasked one.
    plain = pred.detach().clone().requires_grad_(True)
    per_sample_loss(plain, target, torch.zeros(2), sched).sum().backward()
    assert torch.equal(grad[0, :, :, :8], plain.grad[0, :, :, :8])
    white = torch.ones(2, 1, 16, 16)
    assert torch.equal(
        per_sample_loss(pred, target, torch.zeros(2), sched, None, white),
        per_sample_loss(pred, target, torch.zeros(2), sched),
    )


@pytest.fixture()
def sdexp(capsys):
    env = dict(os.environ)

    def run(*args) -> tuple[int, str]:
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
        return code, capsys.readouterr().out

    yield run
    os.environ.clear()
    os.environ.update(env)


def _state(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_reports_missing_mismatched_and_unreadable_masks(tmp_path, sdexp):
    data = tmp_path / "d"
    _subject(data, "good")
    _subject(data, "small")
    Image.new("L", (48, 32), 255).save(data / "small.mask.png")
    _subject(data, "broken")
    (data / "broken.mask.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _subject(data, "bare")
    (data / "bare.mask.png").unlink()
    Image.new("L", (8, 8)).save(data / "ghost.mask.png")
    before = _state(data)
    report = tmp_path / "report"
    code, out = sdexp(
        "prepare", data, "--resolution", "64", "--report", report, "--json", tmp_path / "r.json"
    )
    assert code == 2 and _state(data) == before
    assert (
        "masks       1 mask file, 1 without, 1 mismatched size, 1 unreadable, 1 mask file(s) without an image"
        in out
    )
    assert "small.png: mask" in out and "is 48x32 but its image is 96x64" in out
    assert "broken.png: mask" in out and "cannot be read" in out
    assert "without mask (trained on the whole picture):\n    bare.png" in out
    found = json.loads((tmp_path / "r.json").read_text())
    status = {Path(i["path"]).name: i["mask"] for i in found["images"]}
    assert status == {
        "good.png": "file",
        "small.png": "mismatched",
        "broken.png": "unreadable",
        "bare.png": "none",
    }
    assert [Path(p).name for p in found["orphan_masks"]] == ["ghost.mask.png"]
    assert any("mask(s) unreadable or not the size" in p for p in found["problems"])
    html = (report / "index.html").read_text()
    assert "<h2>Masks</h2>" in html and "mask: file" in html
    # The contact sheet dims and tints what the mask leaves out; the box stays as it is.
    (good,) = [i for i in found["images"] if i["mask"] == "file"]
    index = [Path(i["path"]).name for i in found["images"]].index("good.png")
    thumb = Image.open(report / "thumbs" / f"{index:05d}.png").convert("RGB")
    assert thumb.getpixel((thumb.width * 3 // 4, thumb.height // 3)) == (255, 128, 0)
    r, g, b = thumb.getpixel((2, thumb.height - 3))
    assert r > g and g < 128  # background (0, 128, 0) tinted red

    (data / "small.mask.png").unlink()
    (data / "broken.mask.png").unlink()
    code, out = sdexp("prepare", data, "--resolution", "64", "--no-report", "--mask-required")
    assert code == 2 and "image(s) without a mask (--mask-required)" in out
    code, out = sdexp("prepare", data, "--resolution", "64", "--no-report")
    assert code == 0  # images without a mask are reported but can train


def test_unmasked_weight_is_checked_at_the_door():
    from sdexp.entry import compose_run_config
    from sdexp.errors import ConfigError

    base = ["model=tiny", "data.dir=.", "logger=none", "eval=none"]
    assert compose_run_config([*base]).data.mask.unmasked_weight == 0.0
    with pytest.raises(ConfigError, match="data.mask.unmasked_weight: must be in"):
        compose_run_config([*base, "data.mask.unmasked_weight=1.5"])
