"""Turns scanned image records into deterministic, augmented training tensors."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from sdexp.data.scan import ImageRecord, scan_folder
from sdexp.data.transforms import check_crop_args, load_rgb, resize_and_crop, to_tensor
from sdexp.errors import UserError


def item_rng(seed: int, epoch: int, index: int) -> random.Random:
    """A per-item RNG that is stable across processes and runs (str seeds hash via SHA-512, not hash())."""
    return random.Random(f"sdexp-data:{seed}:{epoch}:{index}")


class ImageCaptionDataset(Dataset):
    """Image/caption pairs cropped to ``resolution`` squares; augmentation depends only on (seed, epoch, index).

    Call ``set_epoch`` before creating each epoch's DataLoader iterator (with ``persistent_workers=False``,
    workers receive a fresh copy of the dataset, so they see the new epoch).
    """

    def __init__(
        self,
        records: list[ImageRecord],
        *,
        resolution: int,
        crop: str = "center",
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        check_crop_args(resolution, crop)
        self.records = list(records)
        self.resolution = resolution
        self.crop = crop
        self.flip = bool(flip)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        index = range(len(self.records))[i]  # normalises negatives, raises IndexError when out of range
        record = self.records[index]
        try:
            img = load_rgb(record.path)
        except OSError as e:
            raise UserError(
                f"cannot read {record.path} (changed or removed after the data scan?): {e}; "
                "restore the file and restart"
            ) from e
        rng = item_rng(self.seed, self.epoch, index)
        img, _ = resize_and_crop(img, self.resolution, self.crop, rng)
        if self.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return {"pixel_values": to_tensor(img), "caption": record.caption, "path": str(record.path)}


def collate(batch: list[dict]) -> dict:
    """Batch items: ``pixel_values`` stacked to [B, 3, H, W]; ``caption`` and ``path`` as lists."""
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in batch]),
        "caption": [item["caption"] for item in batch],
        "path": [item["path"] for item in batch],
    }


def load_dataset(
    data_dir: str | Path,
    *,
    resolution: int,
    default_prompt: str | None = None,
    caption_extension: str = ".txt",
    crop: str = "center",
    flip: bool = False,
    skip_bad: bool = False,
    seed: int = 0,
    warn=print,
    setting: str = "data.dir",
) -> ImageCaptionDataset:
    """Scan ``data_dir`` (read-only) and wrap the usable images in an ImageCaptionDataset."""
    check_crop_args(resolution, crop)
    records = scan_folder(
        data_dir,
        default_prompt=default_prompt,
        caption_extension=caption_extension,
        skip_bad=skip_bad,
        warn=warn,
        setting=setting,
    )
    return ImageCaptionDataset(records, resolution=resolution, crop=crop, flip=flip, seed=seed)
