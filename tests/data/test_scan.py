"""Tests for image discovery, caption lookup and up-front validation of a data folder."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image

from sdexp.data.captions import read_caption
from sdexp.data.scan import IMAGE_EXTENSIONS, ImageRecord, find_images, scan_folder
from sdexp.errors import UserError


def make_image(path: Path, size=(16, 12), color=(200, 30, 30), fmt=None, **save_kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt, **save_kwargs)
    return path


def make_corrupt_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(0).randbytes(2048))
    return path


def make_truncated_jpeg(path: Path) -> Path:
    noisy = Image.effect_noise((128, 128), 64).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def test_find_images_recursive_sorted_case_insensitive_and_skips_hidden(tmp_path):
    expected = [
        make_image(tmp_path / "a.jpg"),
        make_image(tmp_path / "b.PNG", fmt="PNG"),
        make_image(tmp_path / "sub" / "c.JpEg", fmt="JPEG"),
        make_image(tmp_path / "sub" / "deep" / "d.webp"),
        make_image(tmp_path / "z" / "e.BMP", fmt="BMP"),
        make_image(tmp_path / "anim.gif"),  # GIF is trained on (first frame)
        make_image(tmp_path / "scan.TIFF", fmt="TIFF"),
    ]
    make_image(tmp_path / ".hidden.png")
    make_image(tmp_path / ".cache" / "f.png")
    make_image(tmp_path / "sub" / ".thumbs" / "g.jpg")
    make_image(tmp_path / "layers.psd.png.bak", fmt="PNG")  # the extension decides, not the content
    (tmp_path / "drawing.svg").write_text("<svg/>")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "folder.png").mkdir()  # a directory with an image-like name is not an image

    found = find_images(tmp_path)

    assert found == sorted(expected)
    assert find_images(str(tmp_path)) == found  # str accepted, same deterministic order


def test_find_images_rejects_missing_or_file_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match="does not exist") as exc:
        find_images(missing)
    assert str(missing) in str(exc.value)

    file_root = make_image(tmp_path / "x.png")
    with pytest.raises(UserError, match="not a folder") as exc:
        find_images(file_root)
    assert str(file_root) in str(exc.value)


def test_empty_folder_is_a_user_error(tmp_path):
    make_image(tmp_path / ".hidden.png")  # hidden images do not count
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(UserError) as exc:
        scan_folder(tmp_path, default_prompt="x")
    message = str(exc.value)
    assert message.startswith(f"no images found in {tmp_path}")
    for ext in IMAGE_EXTENSIONS:
        assert ext in message


def test_sidecar_caption_wins_over_default_prompt(tmp_path):
    make_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("  a red square \n", encoding="utf-8")
    make_image(tmp_path / "b.png")  # no sidecar
    make_image(tmp_path / "c.png")
    (tmp_path / "c.txt").write_text(" \n\t", encoding="utf-8")  # blank sidecar counts as missing
    make_image(tmp_path / "sub" / "d.jpg")
    (tmp_path / "sub" / "d.txt").write_bytes("\ufeffun café".encode())  # BOM stripped

    records = scan_folder(tmp_path, default_prompt="a photo of sks")

    assert [(r.path.name, r.caption) for r in records] == [
        ("a.png", "a red square"),
        ("b.png", "a photo of sks"),
        ("c.png", "a photo of sks"),
        ("d.jpg", "un café"),
    ]
    assert all(isinstance(r, ImageRecord) and (r.width, r.height) == (16, 12) for r in records)


def test_custom_caption_extension(tmp_path):
    img = make_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("ignored")
    (tmp_path / "a.caption").write_text("from caption file")
    assert read_caption(img, ".caption") == "from caption file"
    assert read_caption(img) == "ignored"
    assert read_caption(make_image(tmp_path / "b.png")) is None
    records = scan_folder(tmp_path, default_prompt="fallback", caption_extension=".caption")
    assert [r.caption for r in records] == ["from caption file", "fallback"]
    with pytest.raises(UserError, match="caption_extension"):
        scan_folder(tmp_path, default_prompt=None, caption_extension="txt")


def test_missing_caption_without_prompt_names_the_image(tmp_path):
    make_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("ok")
    missing = make_image(tmp_path / "sub" / "lonely.jpg")
    for prompt in (None, "", "   "):
        with pytest.raises(UserError) as exc:
            scan_folder(tmp_path, default_prompt=prompt)
        message = str(exc.value)
        assert str(missing) in message
        assert "lonely.txt" in message and "data.prompt" in message


def test_corrupt_and_truncated_images_reported_together(tmp_path):
    make_image(tmp_path / "good.png")
    corrupt = make_corrupt_png(tmp_path / "corrupt.png")
    truncated = make_truncated_jpeg(tmp_path / "sub" / "truncated.jpg")
    empty = tmp_path / "empty.webp"
    empty.write_bytes(b"")

    with pytest.raises(UserError) as exc:
        scan_folder(tmp_path, default_prompt="x")

    lines = str(exc.value).splitlines()
    assert lines[0] == (
        f"3 unreadable image(s) in {tmp_path}; fix or remove them, or set data.skip_bad=true to skip them:"
    )
    listed = "\n".join(lines[1:])
    for bad in (corrupt, truncated, empty):
        assert f"{bad}: " in listed
    assert "truncated" in listed.lower()
    assert "good.png" not in listed


def test_skip_bad_warns_once_and_keeps_good_images(tmp_path):
    good = [make_image(tmp_path / "a.png"), make_image(tmp_path / "z.jpg")]
    make_corrupt_png(tmp_path / "corrupt.png")
    make_truncated_jpeg(tmp_path / "truncated.jpg")
    warnings: list[str] = []

    records = scan_folder(tmp_path, default_prompt="x", skip_bad=True, warn=warnings.append)

    assert [r.path for r in records] == good
    assert len(warnings) == 1
    assert "2 unreadable image(s)" in warnings[0] and str(tmp_path) in warnings[0]


def test_skip_bad_with_only_bad_images_still_fails(tmp_path):
    make_corrupt_png(tmp_path / "corrupt.png")
    with pytest.raises(UserError, match="unreadable"):
        scan_folder(tmp_path, default_prompt="x", skip_bad=True, warn=lambda _: None)


def test_skipped_bad_images_need_no_caption(tmp_path):
    # a corrupt file without a caption is reported as corrupt, not as uncaptioned
    (tmp_path / "a.txt").write_text("cap")
    make_image(tmp_path / "a.png")
    make_corrupt_png(tmp_path / "b.png")
    records = scan_folder(tmp_path, default_prompt=None, skip_bad=True, warn=lambda _: None)
    assert [(r.path.name, r.caption) for r in records] == [("a.png", "cap")]


def test_record_size_is_after_exif_orientation(tmp_path):
    img = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "rotated.jpg", exif=exif)
    (record,) = scan_folder(tmp_path, default_prompt="x")
    assert (record.width, record.height) == (20, 40)
