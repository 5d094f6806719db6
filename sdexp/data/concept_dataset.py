"""The training set of a run: every concept's images, each item tagged with its concept and loss
weight, paired with a class image when prior preservation is on, its caption rendered per step.

Repeats are not copies of items: the batch sampler visits item i ``repeats[i]`` times an epoch, so
concepts with few images are seen as often as the config asks without duplicating data.

With a latent cache, an image whose latents are cached is not decoded at all: the item carries
``latent_params`` (the VAE's distribution) instead of ``pixel_values``, and the training module
encodes only the rest, caching them by ``cache_key``.
"""

from __future__ import annotations

import random
from dataclasses import replace

import torch
from torch.utils.data import Dataset

from sdexp.data.cache import TensorCache, file_digest, latent_key
from sdexp.data.concepts import Concept
from sdexp.data.dataset import ImageCaptionDataset
from sdexp.data.masks import stack_masks
from sdexp.data.scan import ImageRecord

GEOMETRY_KEYS = ("original_size", "crop_top_left", "target_size")  # what SDXL conditions on, per item


class ConceptDataset(Dataset):
    """Items of ``instances`` plus ``concept``, ``loss_weight`` and (with classes) a class example."""

    def __init__(
        self,
        instances: ImageCaptionDataset,
        concept_of: list[int],
        concepts: list[Concept],
        *,
        caption_policy=None,
    ):
        if len(concept_of) != len(instances):
            raise ValueError("concept_of must name a concept for every instance image")
        self.instances = instances
        self.concept_of = list(concept_of)
        self.concepts = list(concepts)
        self.caption_policy = caption_policy
        self.classes: list[ImageCaptionDataset | None] = [None] * len(concepts)
        self.latent_cache: TensorCache | None = None
        self._fixed_policy = None
        if caption_policy is not None:  # the same template and token, without the random parts
            from sdexp.data.caption_policy import CaptionPolicy

            static = replace(caption_policy.options, shuffle_tags=False, tag_dropout=0.0, dropout=0.0)
            self._fixed_policy = CaptionPolicy(static, caption_policy.token)

    @property
    def records(self) -> list[ImageRecord]:
        return self.instances.records

    @property
    def seed(self) -> int:
        return self.instances.seed

    @property
    def epoch(self) -> int:
        return self.instances.epoch

    @property
    def has_classes(self) -> bool:
        return any(c is not None for c in self.classes)

    @property
    def buckets_per_item(self) -> list[tuple[int, int]]:
        return self.instances.buckets_per_item

    def attach_classes(self, concept_index: int, classes: ImageCaptionDataset) -> None:
        """Class images of one concept (prior preservation); each instance item draws one of them."""
        if len(classes) == 0:
            raise ValueError(f"concept {self.concepts[concept_index].name} has no class images")
        self.classes[concept_index] = classes

    def use_latent_cache(self, cache: TensorCache) -> None:
        """Serve cached latents instead of pixels where the cache has them."""
        self.latent_cache = cache

    def set_epoch(self, epoch: int) -> None:
        self.instances.set_epoch(epoch)
        for c in self.classes:
            if c is not None:
                c.set_epoch(epoch)

    def repeats(self) -> list[int]:
        """Visits per epoch of each item, from its concept's ``repeats``."""
        return [self.concepts[c].repeats for c in self.concept_of]

    def __len__(self) -> int:
        return len(self.instances)

    def _image(
        self, dataset: ImageCaptionDataset, i: int, target: tuple[int, int] | None, prefix: str
    ) -> dict:
        """Item ``i`` of ``dataset`` as cached latents when the cache has them, else as pixels."""
        key = None
        if self.latent_cache is not None:
            transform = dataset.transform_of(i, target)
            if transform is not None:
                key = latent_key(file_digest(dataset.records[i].path), transform)
                params = self.latent_cache.get(key)
                if params is not None:
                    record = dataset.records[i]
                    out = {
                        f"{prefix}latent_params": params,
                        f"{prefix}caption": record.caption,
                        f"{prefix}cache_key": key,
                        **{f"{prefix}{k}": v for k, v in dataset.geometry_of(i, target).items()},
                        **({"path": str(record.path)} if not prefix else {}),
                    }
                    if record.mask is not None:  # not in the latents: fitted now, as the image was
                        out[f"{prefix}mask"] = dataset.mask_of(i, target)
                    return out
        item = dataset.item(i, target)
        out = {
            f"{prefix}pixel_values": item["pixel_values"],
            f"{prefix}caption": item["caption"],
            f"{prefix}cache_key": key,
            **{f"{prefix}{k}": item[k] for k in GEOMETRY_KEYS},
        }
        if not prefix:
            out["path"] = item["path"]
        if "mask" in item:
            out[f"{prefix}mask"] = item["mask"]
        return out

    def __getitem__(self, i: int) -> dict:
        index = range(len(self))[i]
        item = self._image(self.instances, index, None, "")
        c = self.concept_of[index]
        rng = random.Random(f"sdexp-concepts:{self.seed}:{self.epoch}:{index}")
        if self.caption_policy is not None:
            item["caption"] = self.caption_policy.render(item["caption"], rng)
        item["concept"] = c
        item["loss_weight"] = self.concepts[c].loss_weight
        classes = self.classes[c]
        if classes is not None:
            # A class image fitted to this item's bucket, so both halves of the batch stack together.
            target = self.instances.buckets_per_item[index]
            item.update(self._image(classes, rng.randrange(len(classes)), target, "class_"))
        return item

    def fixed_item(self, i: int) -> dict:
        """Item ``i`` as the validation loss sees it: pixels (or cached latents) of the current epoch,
        the caption without its random parts (template and token, no shuffling or dropout), no class image."""
        item = self._image(self.instances, range(len(self))[i], None, "")
        if self._fixed_policy is not None:
            item["caption"] = self._fixed_policy.render(item["caption"], random.Random(0))
        return item


def _stack_images(batch: list[dict], prefix: str) -> dict:
    """One half of a batch (instances, or class images): pixels and cached latents stacked apart,
    with the positions each came from and the cache keys of the pixel items."""
    out: dict = {f"{prefix}caption": [item[f"{prefix}caption"] for item in batch]}
    pixel_at = [i for i, item in enumerate(batch) if f"{prefix}pixel_values" in item]
    latent_at = [i for i, item in enumerate(batch) if f"{prefix}latent_params" in item]
    if pixel_at:
        sizes = {tuple(batch[i][f"{prefix}pixel_values"].shape) for i in pixel_at}
        if len(sizes) > 1:
            raise ValueError(f"one batch mixes image sizes {sorted(sizes)}; batch with BucketBatchSampler")
        out[f"{prefix}pixel_values"] = torch.stack([batch[i][f"{prefix}pixel_values"] for i in pixel_at])
    if latent_at:
        out[f"{prefix}latent_params"] = torch.stack([batch[i][f"{prefix}latent_params"] for i in latent_at])
    out[f"{prefix}pixel_at"] = pixel_at
    out[f"{prefix}latent_at"] = latent_at
    out[f"{prefix}cache_key"] = [batch[i][f"{prefix}cache_key"] for i in pixel_at]
    for key in GEOMETRY_KEYS:  # in batch order (SDXL's time ids), whichever half an item came from
        out[f"{prefix}{key}"] = torch.tensor([item[f"{prefix}{key}"] for item in batch], dtype=torch.long)
    masks = stack_masks([item.get(f"{prefix}mask") for item in batch])  # in batch order, as the losses
    if masks is not None:
        out[f"{prefix}mask"] = masks
    return out


def collate_concepts(batch: list[dict]) -> dict:
    """Batch items: both halves (instances, class images) stacked, concept indices, loss weights."""
    out = _stack_images(batch, "")
    out["path"] = [item["path"] for item in batch]
    out["concept"] = torch.tensor([item["concept"] for item in batch], dtype=torch.long)
    out["loss_weight"] = torch.tensor([float(item["loss_weight"]) for item in batch])
    if "class_caption" in batch[0]:
        out.update(_stack_images(batch, "class_"))
    return out
