"""Hostile inputs: every kind of file a real photo folder holds gets a defined behaviour.

``make_hostile_folder`` (hostile_files.py) builds one folder with every kind; test_prepare.py and
tests/e2e/test_data_training.py reuse it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from sdexp.data.dataset import collate, load_dataset
from sdexp.data.scan import MIN_SIDE, UnusableImage, check_images, examine_image, list_folder, scan_folder
from sdexp.data.transforms import MAX_PIXELS, decode
from sdexp.errors import UserError

# textured is re-exported for test_prepare.py
from .hostile_files import BAD, GOOD, ORPHAN, make_hostile_folder, textured  # noqa: F401


@pytest.fixture()
def hostile(tmp_path) -> Path:
    return make_hostile_folder(tmp_path / "data")


def test_every_bad_kind_has_its_reason(hostile):
    paths = list_folder(hostile).images
    good, bad = check_images(paths)
    reasons = {b.path.relative_to(hostile).as_posix(): b.reason for b in bad}
    assert set(reasons) == set(BAD)
    for name, fragment in BAD.items():
        assert fragment in reasons[name], (name, reasons[name])
    assert {p.relative_to(hostile).as_posix() for p, _, _ in good} == set(GOOD)


def test_reasons_say_what_to_do(hostile):
    _, bad = check_images(list_folder(hostile).images)
    for b in bad:
        assert any(w in b.reason for w in ("remove", "convert", "re-save", "downscale", "fix", "copy")), b


@pytest.mark.parametrize(("name", "note"), [(n, note) for n, note in GOOD.items() if note])
def test_good_kinds_decode_with_notes(hostile, name, note):
    decoded = examine_image(hostile / name)
    assert decoded.image.mode == "RGB" and decoded.image.size[0] >= MIN_SIDE
    assert any(note in n for n in decoded.notes()), decoded.notes()


def test_conversions_keep_the_picture(hostile):
    assert examine_image(hostile / "cmyk.jpg").image.getpixel((5, 5))[0] > 200  # cyan-free: red stays
    deep = examine_image(hostile / "deep16.png").image.getpixel((5, 5))
    assert deep[0] == deep[1] == deep[2] and 150 < deep[0] < 160  # 40000/65535 of white, not clipped
    pal = examine_image(hostile / "palette-alpha.png").image
    assert pal.getpixel((5, 5)) == (0, 120, 255) and pal.getpixel((30, 5)) == (255, 255, 255)
    assert examine_image(hostile / "anim.gif").image.getpixel((5, 5)) == (255, 0, 0)  # the first frame
    assert examine_image(hostile / "anim.webp").image.getpixel((5, 5)) == (255, 0, 0)


def test_size_guard_is_ours_and_quiet(hostile):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("huge.png", "bomb.png"):
            with pytest.raises(UnusableImage, match="downscale it"):
                examine_image(hostile / name)
        decoded = decode(hostile / "wide.png", max_pixels=96 * 40)  # exactly at the limit: accepted
    assert decoded.image.size == (96, 40)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    with pytest.raises(UnusableImage, match=f"over the {96 * 40 - 1:,}-pixel limit"):
        examine_image(hostile / "wide.png", max_pixels=96 * 40 - 1)
    assert MAX_PIXELS < 2 * Image.MAX_IMAGE_PIXELS  # ours decides before Pillow's error would


def test_symlinks_followed_and_loops_entered_once(hostile):
    listing = list_folder(hostile, caption_extension=".txt")
    names = {p.relative_to(hostile).as_posix() for p in listing.images}
    assert "link-to-textured.png" in names and "dangling.jpg" in names
    assert not any("loop" in n for n in names)  # the loop is not walked into
    skipped = {p.relative_to(hostile).as_posix(): why for p, why in listing.skipped_dirs}
    assert "same folder as" in skipped["sub/loop"]
    assert "cannot be resolved" in skipped["self"]
    assert hostile / ORPHAN in listing.captions
    assert "pipe.png" not in names and "link-to-pipe.jpg" not in names


def test_scan_lists_every_bad_file_unless_skip_bad(hostile):
    with pytest.raises(UserError) as exc:
        scan_folder(hostile, default_prompt="x")
    message = str(exc.value)
    assert message.startswith(f"{len(BAD)} unreadable image(s)")
    for name in BAD:
        assert str(hostile / name) in message


def test_empty_caption_counts_as_missing(hostile, tmp_path):
    (tmp_path / "one").mkdir()
    Image.new("L", (40, 30), 90).save(tmp_path / "one" / "only.png")
    (tmp_path / "one" / "only.txt").write_text(" \n")
    with pytest.raises(UserError, match=r"caption file .*only\.txt is empty.*data\.prompt"):
        scan_folder(tmp_path / "one", default_prompt=None)
    records = scan_folder(hostile, default_prompt="fallback", skip_bad=True, warn=lambda _: None)
    captions = {r.path.name: r.caption for r in records}
    assert captions["gray.png"] == "fallback"
    assert captions["wide.png"] == "a wide picture"
    assert captions["ünï cödé name ✓.png"] == "a caption with ünïcode"


@pytest.mark.parametrize("kwargs", [{}, {"crop": "none", "pad_color": (255, 0, 255)}, {"buckets": "on"}])
def test_training_never_crashes_on_what_the_scan_accepts(hostile, kwargs):
    from sdexp.data.options import BucketOptions

    if kwargs.get("buckets"):
        kwargs = {"buckets": BucketOptions(enabled=True, min_resolution=16, max_resolution=64, step=16)}
    ds = load_dataset(
        hostile, resolution=32, default_prompt="p", skip_bad=True, flip=True, warn=lambda _: None, **kwargs
    )
    assert len(ds) == len(GOOD)
    from sdexp.data.buckets import BucketBatchSampler

    sampler = BucketBatchSampler(ds.buckets_per_item, 3, seed=0)
    seen = 0
    for batch in DataLoader(ds, batch_sampler=sampler, collate_fn=collate):
        seen += len(batch["path"])
        assert batch["pixel_values"].isfinite().all()
    assert seen == len(GOOD)


def test_opaque_alpha_is_not_reported_as_transparency(tmp_path):
    Image.new("RGBA", (20, 20), (10, 20, 30, 255)).save(tmp_path / "opaque.png")
    Image.new("RGBA", (20, 20), (10, 20, 30, 128)).save(tmp_path / "half.png")
    assert not any("transparency" in n for n in examine_image(tmp_path / "opaque.png").notes())
    assert "transparency composited on white" in examine_image(tmp_path / "half.png").notes()
