"""Turns scanned image records into deterministic, augmented training tensors."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from sdexp.data.buckets import target_sizes
from sdexp.data.masks import attach_masks, check_mask_dir, load_mask, mask_tensor, stack_masks
from sdexp.data.options import BucketOptions, MaskOptions
from sdexp.data.scan import ImageRecord, scan_folder
from sdexp.data.transforms import (
    SMALL_IMAGE_POLICIES,
    Placement,
    check_crop_args,
    check_pad_color,
    fit,
    fixed_placement,
    load_rgb,
    resize_scale,
    to_tensor,
)
from sdexp.errors import UserError


def item_rng(seed: int, epoch: int, index: int) -> random.Random:
    """A per-item RNG that is stable across processes and runs (str seeds hash via SHA-512, not hash())."""
    return random.Random(f"sdexp-data:{seed}:{epoch}:{index}")


def augment(
    img: Image.Image,
    target: tuple[int, int],
    *,
    crop: str,
    flip: bool,
    rng: random.Random,
    pad_color: tuple[int, int, int] = (0, 0, 0),
) -> tuple[Image.Image, Placement]:
    """The one transform training applies to an upright RGB image: fit ``target`` (crop or pad), then
    maybe flip. ``sdexp prepare`` calls it too, so its contact sheet shows what training sees."""
    out, placement = fit(img, target, crop, rng, pad_color)
    if flip and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if crop != "none":  # the crop's mirror image in the flipped, resized source
            top, left = placement.crop_top_left
            mirrored = (top, placement.resized_size[1] - left - target[0])
            placement = dataclasses.replace(placement, crop_top_left=mirrored)
    return out, placement


class ImageCaptionDataset(Dataset):
    """Image/caption pairs fitted to ``resolution`` squares, or to their aspect-ratio bucket;
    augmentation depends only on (seed, epoch, index).

    Call ``set_epoch`` before creating each epoch's DataLoader iterator (with ``persistent_workers=False``,
    workers receive a fresh copy of the dataset, so they see the new epoch). With buckets, batch with
    ``BucketBatchSampler(dataset.buckets_per_item, ...)`` so each batch holds one size.
    """

    def __init__(
        self,
        records: list[ImageRecord],
        *,
        resolution: int,
        crop: str = "center",
        flip: bool = False,
        seed: int = 0,
        pad_color: Sequence[int] = (0, 0, 0),
        buckets: BucketOptions | None = None,
    ) -> None:
        check_crop_args(resolution, crop)
        self.records = list(records)
        self.resolution = resolution
        self.crop = crop
        self.flip = bool(flip)
        self.seed = int(seed)
        self.pad_color = check_pad_color(pad_color)
        self.buckets = buckets if buckets is not None and buckets.enabled else None
        self.epoch = 0
        self._sizes = target_sizes([(r.width, r.height) for r in self.records], resolution, self.buckets)

    @property
    def buckets_per_item(self) -> list[tuple[int, int]]:
        """(width, height) each item is trained at: its bucket, or the resolution square."""
        return list(self._sizes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def transform_of(self, i: int, target: tuple[int, int] | None = None) -> dict | None:
        """What item ``i``'s pixels depend on besides the file, known without decoding it: the key
        of its cached latents. None for random crops, whose placement is drawn every epoch."""
        if self.crop == "random":
            return None
        index = range(len(self.records))[i]
        size = tuple(target) if target is not None else self._sizes[index]
        # fit() draws from the item's rng only for random crops, so a flip is its first draw.
        flipped = self.flip and item_rng(self.seed, self.epoch, index).random() < 0.5
        return {"size": list(size), "crop": self.crop, "pad_color": list(self.pad_color), "flip": flipped}

    def geometry_of(self, i: int, target: tuple[int, int] | None = None) -> dict | None:
        """Item ``i``'s original size, crop and target size, known without decoding it (SDXL's
        micro-conditioning of cached latents); None for random crops."""
        if self.crop == "random":
            return None
        index = range(len(self.records))[i]
        record = self.records[index]
        size = tuple(target) if target is not None else self._sizes[index]
        flipped = self.flip and item_rng(self.seed, self.epoch, index).random() < 0.5
        placement = fixed_placement(record.width, record.height, size, self.crop, flipped=flipped)
        return geometry(placement, size)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return self.item(i)

    def mask_of(self, i: int, target: tuple[int, int] | None = None) -> torch.Tensor | None:
        """Item ``i``'s loss mask as uint8 [1, H, W] (255 = learn), or None without one. It goes
        through ``augment`` with the item's own RNG, so its crop, bucket, padding and flip are the
        image's (also when the image comes from the latent cache and is never decoded)."""
        index = range(len(self.records))[i]
        record = self.records[index]
        if record.mask is None:
            return None
        try:
            mask = load_mask(record.mask)
        except Exception as e:
            raise UserError(
                f"cannot read the mask {record.mask.describe()} of {record.path} (changed or removed "
                f"after the data scan?): {e}; restore it and restart"
            ) from e
        size = tuple(target) if target is not None else self._sizes[index]
        rng = item_rng(self.seed, self.epoch, index)
        fitted, _ = augment(mask.convert("RGB"), size, crop=self.crop, flip=self.flip, rng=rng)
        return mask_tensor(fitted)

    def item(self, i: int, target: tuple[int, int] | None = None) -> dict:
        """Item ``i``, fitted to ``target`` (w, h) instead of its own size when given (e.g. a class
        image that must match the bucket of the instance it is batched with)."""
        index = range(len(self.records))[i]  # normalises negatives, raises IndexError when out of range
        record = self.records[index]
        try:
            img = load_rgb(record.path)
        except Exception as e:
            raise UserError(
                f"cannot read {record.path} (changed or removed after the data scan?): {e}; "
                "restore the file and restart"
            ) from e
        rng = item_rng(self.seed, self.epoch, index)
        size = tuple(target) if target is not None else self._sizes[index]
        img, placement = augment(img, size, crop=self.crop, flip=self.flip, rng=rng, pad_color=self.pad_color)
        out = {
            "pixel_values": to_tensor(img),
            "caption": record.caption,
            "path": str(record.path),
            **geometry(placement, size),
        }
        if record.mask is not None:
            out["mask"] = self.mask_of(index, target)
        return out


_SIZE_KEYS = ("original_size", "crop_top_left", "target_size")


def geometry(placement: Placement, size: tuple[int, int]) -> dict:
    """An item's geometry as SDXL conditions on it: (h, w) of the source, (top, left) of the crop,
    (h, w) of the training image (``size`` is (w, h), as buckets are)."""
    return {
        "original_size": tuple(placement.original_size),
        "crop_top_left": tuple(placement.crop_top_left),
        "target_size": (size[1], size[0]),
    }


def collate(batch: list[dict]) -> dict:
    """Batch items: ``pixel_values`` stacked to [B, 3, H, W]; ``caption`` and ``path`` as lists;
    ``original_size`` and ``crop_top_left`` (when the items have them) as long tensors [B, 2];
    ``mask`` as uint8 [B, 1, H, W] when any item has one."""
    sizes = {tuple(item["pixel_values"].shape) for item in batch}
    if len(sizes) > 1:
        raise ValueError(
            f"one batch mixes image sizes {sorted(sizes)}; batch bucketed data with BucketBatchSampler"
        )
    out = {
        "pixel_values": torch.stack([item["pixel_values"] for item in batch]),
        "caption": [item["caption"] for item in batch],
        "path": [item["path"] for item in batch],
    }
    for key in _SIZE_KEYS:
        if key in batch[0]:
            out[key] = torch.tensor([item[key] for item in batch], dtype=torch.long)
    masks = stack_masks([item.get("mask") for item in batch])
    if masks is not None:
        out["mask"] = masks
    return out


def apply_small_image_policy(
    records: list[ImageRecord],
    *,
    resolution: int,
    crop: str,
    buckets: BucketOptions | None,
    policy: str,
    warn: Callable[[str], object] = print,
    setting: str = "data.dir",
) -> list[ImageRecord]:
    """Records kept under ``data.small_images``: ``upscale`` keeps all, ``warn`` keeps all and says
    which will be enlarged, ``skip`` drops them. "Small" = the fit would enlarge it."""
    if policy not in SMALL_IMAGE_POLICIES:
        raise UserError(f"data.small_images must be one of {', '.join(SMALL_IMAGE_POLICIES)}, got {policy!r}")
    if policy == "upscale":
        return list(records)
    sizes = target_sizes([(r.width, r.height) for r in records], resolution, buckets)
    scales = [resize_scale(r.width, r.height, s, crop) for r, s in zip(records, sizes, strict=True)]
    small = [(r, s) for r, s in zip(records, scales, strict=True) if s > 1.0]
    if not small:
        return list(records)
    worst = max(small, key=lambda rs: rs[1])
    example = f"e.g. {worst[0].path} ({worst[0].width}x{worst[0].height}, x{worst[1]:.2f})"
    if policy == "warn":
        warn(
            f"warning: {len(small)} image(s) in {setting} are smaller than their training size and will "
            f"be upscaled, {example}; set data.small_images=skip to leave them out"
        )
        return list(records)
    kept = [r for r, s in zip(records, scales, strict=True) if s <= 1.0]
    if not kept:
        raise UserError(
            f"every image in {setting} is smaller than its training size and data.small_images=skip "
            f"leaves none, {example}; lower the resolution or set data.small_images=upscale"
        )
    warn(
        f"warning: skipping {len(small)} image(s) smaller than their training size (data.small_images=skip), {example}"
    )
    return kept


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
    pad_color: Sequence[int] = (0, 0, 0),
    small_images: str = "upscale",
    buckets: BucketOptions | None = None,
    masks: MaskOptions | None = None,
) -> ImageCaptionDataset:
    """Scan ``data_dir`` (read-only) and wrap the usable images in an ImageCaptionDataset (with
    their loss masks when ``masks`` is given)."""
    check_crop_args(resolution, crop)
    pad_color = check_pad_color(pad_color)
    if masks is not None:
        check_mask_dir(masks)
    records = scan_folder(
        data_dir,
        default_prompt=default_prompt,
        caption_extension=caption_extension,
        skip_bad=skip_bad,
        warn=warn,
        setting=setting,
        exclude=[masks.dir] if masks is not None and masks.dir else (),  # never images, even unused
    )
    if masks is not None:
        records = attach_masks(records, masks, root=data_dir, warn=warn, setting=setting)
    records = apply_small_image_policy(
        records,
        resolution=resolution,
        crop=crop,
        buckets=buckets if buckets is not None and buckets.enabled else None,
        policy=small_images,
        warn=warn,
        setting=setting,
    )
    return ImageCaptionDataset(
        records, resolution=resolution, crop=crop, flip=flip, seed=seed, pad_color=pad_color, buckets=buckets
    )
