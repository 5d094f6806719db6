"""A captioned folder decoded once into memory, for training small models at GPU speed.

At 64 px a whole dataset is a few hundred MB of uint8; decoding it once (in parallel) and indexing
it on the device removes the data loader from the step. Same validation as every other run.
"""

from __future__ import annotations

import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdexp.data.scan import scan_folder
from sdexp.data.transforms import load_rgb, resize_and_crop


def _decode(paths: list[str], resolution: int) -> np.ndarray:
    out = np.empty((len(paths), resolution, resolution, 3), dtype=np.uint8)
    rng = random.Random(0)  # unused: centre crops
    for i, path in enumerate(paths):
        img, _ = resize_and_crop(load_rgb(path), resolution, "center", rng)
        out[i] = np.asarray(img, dtype=np.uint8)
    return out


@dataclass
class CaptionedImages:
    """``pixels``: uint8 [N, 3, H, W]; ``captions``: N strings; ``train``/``val``: index tensors."""

    pixels: torch.Tensor
    captions: list[str]
    train: torch.Tensor
    val: torch.Tensor

    @classmethod
    def load(
        cls,
        folder: str | Path,
        resolution: int,
        *,
        caption_extension: str = ".txt",
        val_images: int = 0,
        seed: int = 0,
        workers: int = 0,
        setting: str = "data.dir",
    ) -> CaptionedImages:
        records = scan_folder(
            folder, default_prompt=None, caption_extension=caption_extension, setting=setting
        )
        paths = [str(r.path) for r in records]
        if workers > 1 and len(paths) > 256:
            chunk = -(-len(paths) // (workers * 4))
            parts = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
            with ProcessPoolExecutor(workers) as pool:
                arrays = list(pool.map(_decode, parts, [resolution] * len(parts)))
            array = np.concatenate(arrays)
        else:
            array = _decode(paths, resolution)
        pixels = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
        order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))
        n_val = min(val_images, len(paths) - 1)
        return cls(
            pixels, [r.caption for r in records], order[n_val:].sort().values, order[:n_val].sort().values
        )

    def __len__(self) -> int:
        return len(self.captions)

    def to(self, device) -> CaptionedImages:
        self.pixels = self.pixels.to(device)
        return self

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """Pixels in [-1, 1] (float32, on the store's device) and captions of ``index``."""
        pixels = self.pixels[index.to(self.pixels.device)].float() / 127.5 - 1.0
        return pixels, [self.captions[i] for i in index.tolist()]


def index_loader(indices: torch.Tensor, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    """Shuffled batches of dataset indices (the step gathers the pixels on the device)."""
    return torch.utils.data.DataLoader(
        indices,
        batch_size=min(batch_size, len(indices)),
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )


def fixed_batches(indices: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The validation indices in fixed chunks."""
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
