"""A toy image folder for tests: a red square with a yellow disc on varied backgrounds.

Odd-numbered images have a caption file ("a photo of sks toy on a plain background"), even ones
rely on data.prompt, so both caption paths are exercised. Sizes are not square (96×80).
"""

from __future__ import annotations

import random
from pathlib import Path

PROMPT = "a photo of sks toy"


def write_demo_images(out_dir: Path, n: int = 8, seed: int = 0) -> Path:
    """A red square with a yellow disc (the 'sks toy') on varied backgrounds, some with captions."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        bg = tuple(rng.randrange(40, 220) for _ in range(3))
        img = Image.new("RGB", (96, 80), bg)
        draw = ImageDraw.Draw(img)
        size = rng.randrange(30, 50)
        x, y = rng.randrange(5, 96 - size - 5), rng.randrange(5, 80 - size - 5)
        draw.rectangle([x, y, x + size, y + size], fill=(210, 30, 30))
        r = size // 4
        cx, cy = x + size // 2, y + size // 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 220, 40))
        img.save(out_dir / f"toy-{i:02d}.png")
        if i % 2:
            (out_dir / f"toy-{i:02d}.txt").write_text(f"{PROMPT} on a plain background\n")
    return out_dir
