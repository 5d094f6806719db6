"""Builders of hostile data folders, shared by the data tests and the end-to-end training tests.

``make_hostile_folder`` writes one folder holding every kind of file a real photo folder may hold
(tiny files, made here); ``folder_state`` fingerprints a folder so a test can prove nothing in it
changed.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import zlib
from pathlib import Path

from PIL import Image

# name -> a fragment its reason must contain (each is "bad": unusable for training)
BAD = {
    "corrupt.png": "corrupt or undecodable",
    "truncated.jpg": "truncated",
    "zero.jpg": "empty file (0 bytes)",
    "one-pixel.png": "too small to train on: 1x1",
    "huge.png": "over the 100,000,000-pixel limit",
    "bomb.png": "decompression-bomb guard",
    "photo.heic": "HEIC/HEIF image",
    "iphone-renamed.jpg": "HEIC/HEIF image",
    "readme.jpg": "a text file, not an image",
    "dangling.jpg": "broken symbolic link",
}
# name -> a note prepare's report gives (each is usable)
GOOD = {
    "cmyk.jpg": "CMYK converted to RGB",
    "deep16.png": "high bit depth (I;16)",
    "palette-alpha.png": "transparency composited on white",
    "gray.png": None,
    "anim.gif": "animated (3 frames): first frame used",
    "anim.webp": "animated (2 frames): first frame used",
    "sub/ünï cödé name ✓.png": None,
    "link-to-textured.png": None,
    "textured.png": None,
    "textured-copy.png": None,
    "textured-recompressed.jpg": None,
    "wide.png": None,
}
ORPHAN = "lonely caption.txt"
EMPTY_CAPTION_IMAGE = "gray.png"


def textured(size=(64, 48), seed=0) -> Image.Image:
    """Smooth random blobs: distinct images, yet stable under resizing (for the near-duplicate hash)."""
    rng = random.Random(seed)
    small = Image.new("RGB", (4, 3))
    small.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(12)])
    return small.resize(size, Image.Resampling.BICUBIC)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but holds one row: cheap to write, huge to decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def heic_like() -> bytes:
    return struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00mif1heic" + bytes(200)


def make_hostile_folder(root: Path) -> Path:
    """Every hostile kind in one folder (see BAD and GOOD), plus captions, an orphan and loops."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir()
    # bad
    png = io.BytesIO()
    textured(seed=9).save(png, "PNG")
    data = bytearray(png.getvalue())
    idat = data.index(b"IDAT")
    data[idat + 8 : idat + 40] = bytes(32)  # zeroed compressed stream: the header still parses
    (root / "corrupt.png").write_bytes(bytes(data))
    jpeg = io.BytesIO()
    Image.effect_noise((96, 96), 64).convert("RGB").save(jpeg, "JPEG", quality=95)
    (root / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "zero.jpg").write_bytes(b"")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(root / "one-pixel.png")
    (root / "huge.png").write_bytes(png_header(12_000, 10_000))  # 120 MP: over ours, under Pillow's error
    (root / "bomb.png").write_bytes(png_header(40_000, 40_000))  # 1.6 GP: over Pillow's own limit too
    (root / "photo.heic").write_bytes(heic_like())
    (root / "iphone-renamed.jpg").write_bytes(heic_like())
    (root / "readme.jpg").write_text("These are my holiday photos.\nDo not delete.\n")
    os.symlink(root / "missing.jpg", root / "dangling.jpg")
    # good
    Image.new("CMYK", (40, 30), (0, 200, 200, 0)).save(root / "cmyk.jpg")
    Image.new("I;16", (40, 30), 40000).save(root / "deep16.png")
    pal = Image.new("P", (40, 30), 0)
    pal.putpalette([0, 0, 0, 0, 120, 255] + [0] * 762)
    pal.paste(1, (0, 0, 20, 30))
    pal.save(root / "palette-alpha.png", transparency=0)
    Image.new("L", (40, 30), 90).save(root / "gray.png")
    (root / "gray.txt").write_text("   \n")  # empty caption: treated as missing
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(root / "anim.webp", save_all=True, append_images=frames[1:2], duration=100, lossless=True)
    textured(seed=1).save(root / "sub" / "ünï cödé name ✓.png")
    (root / "sub" / "ünï cödé name ✓.txt").write_text("a caption with ünïcode", encoding="utf-8")
    textured(seed=2).save(root / "textured.png")
    (root / "textured-copy.png").write_bytes((root / "textured.png").read_bytes())
    textured(seed=2, size=(128, 96)).save(root / "textured-recompressed.jpg", quality=85)
    os.symlink(root / "textured.png", root / "link-to-textured.png")
    textured((96, 40), seed=3).save(root / "wide.png")
    (root / "wide.txt").write_text("a wide picture")
    # neither
    (root / ORPHAN).write_text("an image that was deleted")
    os.symlink(root, root / "sub" / "loop")  # a folder loop
    os.symlink(root / "self", root / "self")  # a link to itself
    os.mkfifo(root / "pipe.png")  # opening a pipe would block forever: never listed
    os.symlink(root / "pipe.png", root / "link-to-pipe.jpg")
    return root


def folder_state(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed): content hash or link target, and mtime."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if path.is_symlink():
                state[str(path)] = ("link", os.readlink(path), st.st_mtime_ns)
            elif path.is_file():
                state[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns)
            else:
                state[str(path)] = ("dir" if path.is_dir() else "other", st.st_mtime_ns)
    return state
