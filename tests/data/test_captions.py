"""Tests for caption sidecars: paths, reading, and the atomic, no-clobber writer that `sdexp caption` uses."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sdexp.data.captions import CaptionExistsError, caption_path, read_caption, write_caption
from sdexp.errors import UserError


def test_caption_path_uses_the_extension_and_rejects_a_bad_one(tmp_path):
    assert caption_path(tmp_path / "a.b.jpg") == tmp_path / "a.b.txt"
    assert caption_path(tmp_path / "a.png", ".caption") == tmp_path / "a.caption"
    with pytest.raises(UserError, match=r"data\.caption_extension"):
        caption_path(tmp_path / "a.png", "txt")


def test_write_then_read_round_trips_and_ends_with_one_newline(tmp_path):
    image = tmp_path / "dog.jpg"
    path = write_caption(image, "  sks dog, sofa \n\n", ".caption")
    assert path == tmp_path / "dog.caption"
    assert path.read_bytes() == b"sks dog, sofa\n"
    assert read_caption(image, ".caption") == "sks dog, sofa"
    assert write_caption(tmp_path / "cafe.png", "café ☕").read_text(encoding="utf-8") == "café ☕\n"


def test_existing_sidecar_is_never_replaced_without_overwrite(tmp_path):
    image = tmp_path / "dog.jpg"
    sidecar = tmp_path / "dog.txt"
    sidecar.write_bytes(b"my own caption\r\n")
    with pytest.raises(CaptionExistsError, match="--overwrite"):
        write_caption(image, "generated")
    assert sidecar.read_bytes() == b"my own caption\r\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dog.txt"]  # no temp file left behind

    write_caption(image, "generated", overwrite=True)
    assert sidecar.read_text() == "generated\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dog.txt"]


def test_a_blank_existing_sidecar_also_counts_as_existing(tmp_path):
    (tmp_path / "dog.txt").write_text("")
    with pytest.raises(CaptionExistsError):
        write_caption(tmp_path / "dog.jpg", "generated")


def test_written_sidecar_gets_a_normal_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_caption(tmp_path / "dog.jpg", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_sidecar_that_appears_while_writing_is_not_clobbered(tmp_path, monkeypatch):
    real_link = os.link

    def racing_link(src, dst):
        Path(dst).write_text("written meanwhile by someone else")
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    with pytest.raises(CaptionExistsError):
        write_caption(tmp_path / "dog.jpg", "generated")
    assert (tmp_path / "dog.txt").read_text() == "written meanwhile by someone else"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dog.txt"]


def test_file_systems_without_hard_links_still_get_the_sidecar(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    assert write_caption(tmp_path / "dog.jpg", "generated").read_text() == "generated\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dog.txt"]


def test_unwritable_place_is_a_user_error_naming_the_file(tmp_path):
    with pytest.raises(UserError, match=r"cannot write caption file .*gone.dog\.txt"):
        write_caption(tmp_path / "gone" / "dog.jpg", "x")
