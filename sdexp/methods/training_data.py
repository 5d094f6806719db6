"""The data side of every Stable Diffusion method: concepts, class images, captions, caches, batches.

Kept apart from ``StableDiffusionModule`` (the model side: encoding, the loss, validation, samples),
which mixes it in. It reads ``self.cfg``, and after ``setup`` ``self.base`` and ``self.trainer``.
"""

from __future__ import annotations

import torch


class TrainingData:
    """Mixin: ``load_data`` before any model loads, then class images and caches once it has."""

    def load_data(self) -> None:
        """Scan and validate every concept's folder (and its class images); fails before any model loads."""
        from sdexp.data.concept_dataset import ConceptDataset
        from sdexp.data.concepts import resolve_concepts
        from sdexp.data.dataset import ImageCaptionDataset
        from sdexp.methods.prior import user_class_records

        d = self.cfg.data
        crop = d.crop
        if crop == "random" and d.cache.latents:
            print("data.cache.latents: cached latents need a fixed crop, so random crops become centre crops")
            crop = "center"
        self.concepts = resolve_concepts(self.cfg)
        policy = self._caption_policy()
        records, concept_of = [], []
        for index, concept in enumerate(self.concepts):
            setting = "data.dir" if not d.concepts else f"data.concepts[{index}].dir"
            found = self._scan(concept.dir, concept.prompt, setting, masks=True)
            for record in found:  # a {token} in a caption without data.token fails now, not mid-run
                policy.check(record.caption, where=f"the caption of {record.path}")
            records += found
            concept_of += [index] * len(found)
        self.masked_images = sum(r.mask is not None for r in records)
        self.train_dataset = ConceptDataset(
            ImageCaptionDataset(records, **self._image_options(crop, d.flip)),
            concept_of,
            self.concepts,
            caption_policy=policy,
        )
        self.user_class_records = {}
        m = self.cfg.method
        for index, concept in enumerate(self.concepts):
            if concept.class_prompt:
                self.user_class_records[index] = user_class_records(
                    concept, m.num_class_images, caption_extension=d.caption_extension, skip_bad=d.skip_bad
                )
        self.val_dataset = None
        if d.val_dir:
            found = self._scan(d.val_dir, d.prompt or self.concepts[0].prompt, "data.val_dir")
            self.val_dataset = ConceptDataset(
                ImageCaptionDataset(found, **self._image_options("center", False)),
                [0] * len(found),
                self.concepts[:1],
                caption_policy=policy,
            )

    def _scan(self, folder, prompt: str | None, setting: str, *, masks: bool = False):
        """Every usable image of ``folder`` (bad files and small images per the data config), with
        its loss mask when ``masks`` (training images; the validation loss is unmasked)."""
        from sdexp.data.dataset import apply_small_image_policy
        from sdexp.data.masks import attach_masks, check_mask_dir
        from sdexp.data.scan import scan_folder

        d = self.cfg.data
        check_mask_dir(d.mask)
        found = scan_folder(
            folder,
            default_prompt=prompt,
            caption_extension=d.caption_extension,
            skip_bad=d.skip_bad,
            setting=setting,
            exclude=[d.mask.dir] if d.mask.dir else (),  # a mask folder is never images, even unused
        )
        if masks:  # a mask folder mirrors data.dir (kohya subfolders included), else each concept's
            root = d.dir if d.dir and not d.concepts else folder
            found = attach_masks(found, d.mask, root=root, setting=setting)
        return apply_small_image_policy(
            found,
            resolution=self.resolution,
            crop=d.crop,
            buckets=d.buckets if d.buckets.enabled else None,
            policy=d.small_images,
            setting=setting,
        )

    def _image_options(self, crop: str, flip: bool) -> dict:
        d = self.cfg.data
        return dict(
            resolution=self.resolution,
            crop=crop,
            flip=flip,
            seed=self.cfg.train.seed,
            pad_color=d.pad_color,
            buckets=d.buckets,
        )

    def _caption_policy(self):
        """Per-step caption rendering (templates, tag shuffling, dropout) from ``data.captions``."""
        from sdexp.data.caption_policy import CaptionPolicy

        return CaptionPolicy(self.cfg.data.captions, self.cfg.data.token)

    @property
    def prior_loss_weight(self) -> float:
        return float(getattr(self.cfg.method, "prior_loss_weight", 0.0))

    def _attach_class_images(self) -> None:
        """Top up each concept's class images from the base model (cached), before adapters go in."""
        from contextlib import nullcontext

        # Several processes: the main one generates and caches the class images, the others then
        # find them in the cache (generation is deterministic, so they would only redo its work).
        acc = self.trainer.accelerator
        with acc.main_process_first() if acc.num_processes > 1 else nullcontext():
            self._generate_class_images()

    def _generate_class_images(self) -> None:
        from sdexp.data.dataset import ImageCaptionDataset
        from sdexp.methods.prior import generated_class_records
        from sdexp.samplers import make_scheduler

        m, d = self.cfg.method, self.cfg.data
        pipe = None
        self.class_images_generated = 0
        for index, own in self.user_class_records.items():
            concept = self.concepts[index]
            missing = m.num_class_images - len(own)
            if missing > 0 and pipe is None:
                pipe = self.base.pipeline(make_scheduler(m.class_sampler, self.base.noise_scheduler.config))
                pipe.set_progress_bar_config(disable=True)
            generated, made = generated_class_records(
                concept,
                missing,
                m,
                model_ref=self.cfg.model.path or self.cfg.model.name,
                resolution=self.resolution,
                pipeline=pipe,
                device=self.trainer.device,
                notify=print,
            )
            self.class_images_generated += made
            records = own + generated
            if records:
                self.train_dataset.attach_classes(
                    index, ImageCaptionDataset(records, **self._image_options("center", d.flip))
                )

    def _warn_about_token(self) -> None:
        from sdexp.data.concepts import common_token_warning, instance_token

        for concept in self.concepts:
            class_prompt = (
                concept.class_prompt or self.cfg.method.class_prompt
            )  # known even without the prior
            token = instance_token(concept.prompt, class_prompt, self.cfg.data.token)
            warning = common_token_warning(token, self.base.tokenizers[0])
            if warning:
                print(warning)

    def _open_caches(self) -> None:
        """``data.cache``: latents and text embeddings on disk, under the base's fingerprint."""
        from sdexp.data.cache import TensorCache, cache_folder, encoder_namespace
        from sdexp.models.fingerprint import model_fingerprint

        c = self.cfg.data.cache
        if not (c.latents or c.text):
            return
        root, fingerprint = cache_folder(c.dir), model_fingerprint(self.base.path)
        if c.latents:
            namespace = encoder_namespace(fingerprint, "vae", self._vae_dtype)
            self.latent_cache = TensorCache(root, "latents", namespace)
            for dataset in (self.train_dataset, self.val_dataset):
                if dataset is not None:
                    dataset.use_latent_cache(self.latent_cache)
        if c.text:
            policy = self.train_dataset.caption_policy
            if self.text_encoder_trains:
                print(
                    "data.cache.text: the text encoder trains, so its outputs change; encoding captions live"
                )
            elif policy is not None and not policy.is_static:
                print(
                    "data.cache.text: caption shuffling/dropout change the text every step; "
                    "the text encoder stays live (only fixed captions are cached)"
                )
            else:
                dtype = self.base.text_encoders[0].dtype
                namespace = encoder_namespace(fingerprint, "text_encoders", dtype)
                self.text_cache = TensorCache(root, "text", namespace)

    def run_info(self) -> dict:
        """What run.json records about the data: cache use and class images generated."""
        info = {"cache": dict(self.cache_stats)}
        if self.text_cache is not None:
            info["cache"]["text_from_cache"] = self.text_cache.hits
            info["cache"]["text_encoded"] = self.text_cache.stored
        if self.user_class_records:
            info["class_images_generated"] = self.class_images_generated
        if self.masked_images:
            info["masked_images"] = self.masked_images
        return info

    def train_dataloader(self):
        """One bucket per batch, each item ``repeats`` times an epoch, in an order fixed by the seed.

        Under several processes this is the process's own loader: its sampler cuts each global
        batch (``processes × train.batch_size``) and keeps this process's slice (BucketBatchSampler)."""
        from sdexp.data.buckets import BucketBatchSampler
        from sdexp.data.concept_dataset import collate_concepts

        t = self.cfg.train
        dataset = self.train_dataset
        acc = self.trainer.accelerator if self.trainer is not None else None
        processes, rank = (acc.num_processes, acc.process_index) if acc is not None else (1, 0)
        # Without buckets every batch is full (as long as there are enough images); with them a
        # bucket's last partial batch is kept rather than dropping those images from the epoch.
        global_batch = t.batch_size * processes
        drop_last = not self.cfg.data.buckets.enabled and sum(dataset.repeats()) >= global_batch
        self._batch_sampler = BucketBatchSampler(
            dataset.buckets_per_item,
            t.batch_size,
            seed=t.seed,
            drop_last=drop_last,
            repeats=dataset.repeats(),
            num_replicas=processes,
            rank=rank,
        )
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self._batch_sampler,
            collate_fn=collate_concepts,
            num_workers=self.cfg.data.num_workers,
        )

    def on_train_epoch_start(self, epoch: int) -> None:
        self.train_dataset.set_epoch(epoch)
        self._batch_sampler.set_epoch(epoch)

    def _concept_counts(self, concept: torch.Tensor) -> dict[str, float]:
        """Images seen so far per concept (logged only when there are several)."""
        if len(self.concepts) < 2:
            return {}
        self.images_seen.update(concept.tolist())
        return {f"train/images/{c.name}": float(self.images_seen[i]) for i, c in enumerate(self.concepts)}
