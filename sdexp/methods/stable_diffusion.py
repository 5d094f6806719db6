"""What every Stable Diffusion method shares: data, encoding, the denoising loss, validation, samples.

A subclass says which parameters train (``configure_adapters``) and how they are saved
(``on_save_checkpoint``); DreamBooth, full fine-tuning and from-scratch training extend this.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import torch

from sdexp.config import RunConfig
from sdexp.methods.base import StepOutput, TrainingModule
from sdexp.methods.diffusion import per_sample_loss, prediction_target, sample_noise, sample_timesteps
from sdexp.models.loading import DTYPES, BaseModel, load_base, native_resolution

VALIDATION_SEED_OFFSET = 1_000_003  # keeps validation noise apart from training noise


def resolve_weight_dtype(model_dtype: str, mixed_precision: str) -> torch.dtype:
    """Frozen weights: the mixed-precision dtype under ``auto``, else the one asked for."""
    if model_dtype == "auto":
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    return DTYPES[model_dtype]


class StableDiffusionModule(TrainingModule):
    """Latent-diffusion training on an SD 1.x-style base with a frozen VAE."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.base: BaseModel | None = None
        self.train_dataset = None
        self._generator: torch.Generator | None = None
        self._val_cache: list[dict] | None = None
        self._token_cache: dict[str, torch.Tensor] = {}
        self._unet_call = self._text_encoder_call = None  # set once accelerate has prepared them
        self.latent_cache = self.text_cache = None  # on-disk encodings (data.cache), set in setup
        self._text_memo: dict[str, torch.Tensor] = {}
        self.cache_stats = {"latents_encoded": 0, "latents_from_cache": 0}
        self.class_images_generated = 0

    # ----- set-up -------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        cfg = self.cfg
        model_ref = cfg.model.path or cfg.model.name
        return cfg.train.resolution or cfg.model.resolution or native_resolution(model_ref, cfg.model.family)

    def load_data(self) -> None:
        """Scan and validate every concept's folder (and its class images); fails before any model loads."""
        from sdexp.data.concept_dataset import ConceptDataset
        from sdexp.data.concepts import resolve_concepts
        from sdexp.data.dataset import ImageCaptionDataset
        from sdexp.methods.prior import user_class_records

        d = self.cfg.data
        self.concepts = resolve_concepts(self.cfg)
        policy = self._caption_policy()
        records, concept_of = [], []
        for index, concept in enumerate(self.concepts):
            setting = "data.dir" if not d.concepts else f"data.concepts[{index}].dir"
            found = self._scan(concept.dir, concept.prompt, setting)
            for record in found:  # a {token} in a caption without data.token fails now, not mid-run
                policy.check(record.caption, where=f"the caption of {record.path}")
            records += found
            concept_of += [index] * len(found)
        self.train_dataset = ConceptDataset(
            ImageCaptionDataset(records, **self._image_options(d.crop, d.flip)),
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

    def _scan(self, folder, prompt: str | None, setting: str):
        """Every usable image of ``folder`` (bad files and small images per the data config)."""
        from sdexp.data.dataset import apply_small_image_policy
        from sdexp.data.scan import scan_folder

        d = self.cfg.data
        found = scan_folder(
            folder, default_prompt=prompt, caption_extension=d.caption_extension, skip_bad=d.skip_bad, setting=setting
        )
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
        if crop == "random" and d.cache.latents:
            if not getattr(self, "_said_random_crop", False):
                print("data.cache.latents: cached latents need a fixed crop, so random crops become centre crops")
                self._said_random_crop = True
            crop = "center"
        return dict(
            resolution=self.resolution, crop=crop, flip=flip, seed=self.cfg.train.seed, pad_color=d.pad_color, buckets=d.buckets
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
                self.train_dataset.attach_classes(index, ImageCaptionDataset(records, **self._image_options("center", d.flip)))

    def _warn_about_token(self) -> None:
        from sdexp.data.concepts import common_token_warning, instance_token

        for concept in self.concepts:
            token = instance_token(concept.prompt, concept.class_prompt, self.cfg.data.token)
            warning = common_token_warning(token, self.base.tokenizer)
            if warning:
                print(warning)

    def setup(self, trainer) -> None:
        super().setup(trainer)
        cfg = self.cfg
        if self.train_dataset is None:
            self.load_data()
        weight_dtype = self.weight_dtype = resolve_weight_dtype(cfg.model.dtype, cfg.train.mixed_precision)
        model_ref = cfg.model.path or cfg.model.name
        self.base = load_base(
            model_ref,
            family=cfg.model.family,
            variant=cfg.model.variant,
            dtype=weight_dtype,
            prediction_type=cfg.model.prediction_type,
            allow_pickle=cfg.model.allow_pickle,
        )
        device = trainer.device
        for module in (self.base.unet, self.base.vae, self.base.text_encoder):
            module.to(device)
        if self.cfg.method.name == "dreambooth":
            self._warn_about_token()
        if self.user_class_records:
            self._attach_class_images()
        self.configure_adapters()
        for module in self.trainable_modules():
            module.to(device)  # adapters are created on the CPU
        if cfg.train.gradient_checkpointing:
            self.base.unet.enable_gradient_checkpointing()
            if self.text_encoder_trains:
                self.base.text_encoder.gradient_checkpointing_enable()
        self._generator = torch.Generator(device=device).manual_seed(cfg.train.seed)
        # diffusers' `.dtype` walks every submodule on each read (ms per step): read it once.
        self._unet_dtype = self.base.unet.dtype
        self._vae_dtype = self.base.vae.dtype
        self._open_caches()

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
                print("data.cache.text: the text encoder trains, so its outputs change; encoding captions live")
            elif policy is not None and not policy.is_static:
                print(
                    "data.cache.text: caption shuffling/dropout change the text every step; "
                    "the text encoder stays live (only fixed captions are cached)"
                )
            else:
                namespace = encoder_namespace(fingerprint, "text_encoder", self.base.text_encoder.dtype)
                self.text_cache = TensorCache(root, "text", namespace)

    def run_info(self) -> dict:
        """What run.json records about the data: cache use and class images generated."""
        info = {"cache": dict(self.cache_stats)}
        if self.text_cache is not None:
            info["cache"]["text_from_cache"] = self.text_cache.hits
            info["cache"]["text_encoded"] = self.text_cache.stored
        if self.user_class_records:
            info["class_images_generated"] = self.class_images_generated
        return info

    def on_modules_prepared(self, modules: list[torch.nn.Module]) -> None:
        # Forward through accelerate's wrappers so DDP can sync gradients (same objects on one device).
        self._unet_call = modules[0]
        self._text_encoder_call = modules[1] if self.text_encoder_trains else self.base.text_encoder

    def configure_adapters(self) -> None:
        """Choose and wrap the trainable parameters (subclasses)."""
        raise NotImplementedError

    @property
    def text_encoder_trains(self) -> bool:
        return False

    def train_dataloader(self):
        """One bucket per batch, each item ``repeats`` times an epoch, in an order fixed by the seed."""
        from sdexp.data.buckets import BucketBatchSampler
        from sdexp.data.concept_dataset import collate_concepts

        t = self.cfg.train
        dataset = self.train_dataset
        # Without buckets every batch is full (as long as there are enough images); with them a
        # bucket's last partial batch is kept rather than dropping those images from the epoch.
        drop_last = not self.cfg.data.buckets.enabled and sum(dataset.repeats()) >= t.batch_size
        self._batch_sampler = BucketBatchSampler(
            dataset.buckets_per_item, t.batch_size, seed=t.seed, drop_last=drop_last, repeats=dataset.repeats()
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

    # ----- encoding -----------------------------------------------------------------------
    def token_ids(self, captions: list[str]) -> torch.Tensor:
        """Padded token ids, tokenized once per distinct caption."""
        tok, cache = self.base.tokenizer, self._token_cache
        for caption in captions:
            if caption not in cache:
                cache[caption] = tok(
                    caption,
                    padding="max_length",
                    max_length=tok.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids[0]
        return torch.stack([cache[c] for c in captions])

    def encode_prompts(self, captions: list[str]) -> torch.Tensor:
        if self.text_cache is None:
            ids = self.token_ids(captions).to(self.trainer.device)
            return self._text_encoder_call(ids)[0]
        return torch.stack(self._cached_text(captions))

    def _cached_text(self, captions: list[str]) -> list[torch.Tensor]:
        """Frozen text-encoder outputs per caption: memory, then disk, then encoded (and stored)."""
        from sdexp.data.cache import caption_key

        memo, device, max_length = self._text_memo, self.trainer.device, self.base.tokenizer.model_max_length
        missing = []
        for caption in dict.fromkeys(captions):
            if caption in memo:
                continue
            stored = self.text_cache.get(caption_key(caption, max_length))
            if stored is None:
                missing.append(caption)
            else:
                memo[caption] = stored.to(device)
        if missing:
            with torch.no_grad():
                encoded = self._text_encoder_call(self.token_ids(missing).to(device))[0]
            for caption, hidden in zip(missing, encoded, strict=True):
                self.text_cache.put(caption_key(caption, max_length), hidden)
                memo[caption] = hidden
        return [memo[c] for c in captions]

    def _latent_params(self, batch: dict, prefix: str = "") -> torch.Tensor:
        """VAE latent-distribution parameters [B, 2C, h, w] of one half of a batch: cached rows as
        they are, the others encoded now (and cached under their keys)."""
        device, vae = self.trainer.device, self.base.vae
        rows: dict[int, torch.Tensor] = {}
        pixel_at, latent_at = batch[f"{prefix}pixel_at"], batch[f"{prefix}latent_at"]
        if pixel_at:
            pixels = batch[f"{prefix}pixel_values"].to(device, dtype=self._vae_dtype)
            with torch.no_grad():
                params = vae.encode(pixels).latent_dist.parameters
            for position, key, row in zip(pixel_at, batch[f"{prefix}cache_key"], params, strict=True):
                rows[position] = row
                if key is not None and self.latent_cache is not None:
                    self.latent_cache.put(key, row)
        if latent_at:
            cached = batch[f"{prefix}latent_params"].to(device, dtype=self._vae_dtype)
            rows.update(zip(latent_at, cached, strict=True))
        self.cache_stats["latents_encoded"] += len(pixel_at)
        self.cache_stats["latents_from_cache"] += len(latent_at)
        return torch.stack([rows[i] for i in range(len(rows))])

    def _predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        dtype = self._unet_dtype
        return self._unet_call(noisy.to(dtype), timesteps, text.to(dtype)).sample

    # ----- steps --------------------------------------------------------------------------
    def training_step(self, batch: dict, step: int) -> StepOutput:
        """Instance loss (weighted by concept) plus ``prior_loss_weight`` × the class images' loss."""
        params, captions = self._latent_params(batch), list(batch["caption"])
        n = params.shape[0]
        prior = None
        if "class_caption" in batch:
            class_params, class_captions = self._latent_params(batch, "class_"), list(batch["class_caption"])
            if class_params.shape[1:] == params.shape[1:]:
                # One UNet call over instance and class images together, as DreamBooth trains.
                losses = self._denoising_losses(torch.cat([params, class_params]), captions + class_captions)
                instance, prior = losses[:n], losses[n:]
            else:
                instance = self._denoising_losses(params, captions)
                prior = self._denoising_losses(class_params, class_captions)
        else:
            instance = self._denoising_losses(params, captions)
        weights = batch["loss_weight"].to(instance.device, instance.dtype)
        loss = (instance * weights).mean()
        logs = self._concept_counts(batch["concept"])
        if prior is not None:
            logs["train/instance_loss"] = float(instance.detach().mean())
            logs["train/prior_loss"] = float(prior.detach().mean())
            loss = loss + self.prior_loss_weight * prior.mean()
        return StepOutput(loss=loss, logs=logs)

    def _denoising_losses(self, latent_params: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Per-sample denoising loss: latents drawn from the VAE distribution, fresh noise and timesteps."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        t, sched, gen = self.cfg.train, self.base.noise_scheduler, self._generator
        latents = DiagonalGaussianDistribution(latent_params).sample(generator=gen)
        latents = (latents * self.base.vae.config.scaling_factor).float()
        noise = sample_noise(latents, gen, t.noise_offset)
        timesteps = sample_timesteps(latents.shape[0], sched.config.num_train_timesteps, gen, latents.device)
        noisy = sched.add_noise(latents, noise, timesteps)
        with torch.set_grad_enabled(self.text_encoder_trains):
            text = self.encode_prompts(captions)
        pred = self._predict(noisy, timesteps, text)
        target = prediction_target(sched, latents, noise, timesteps)
        return per_sample_loss(pred, target, timesteps, sched, t.min_snr_gamma)

    def _concept_counts(self, concept: torch.Tensor) -> dict[str, float]:
        """Images seen so far per concept (logged only when there are several)."""
        if len(self.concepts) < 2:
            return {}
        counts = self._seen = getattr(self, "_seen", [0] * len(self.concepts))
        for c in concept.tolist():
            counts[c] += 1
        return {f"train/images/{self.concepts[i].name}": float(v) for i, v in enumerate(counts)}

    def val_batches_expected(self) -> bool:
        """Whether validation will have data (known after ``load_data``, before models load)."""
        return self.val_dataset is not None or self.cfg.data.val_images > 0

    def val_batches(self) -> list[dict]:
        """Encoded once: fixed latents (VAE mean), noise and a timestep grid, from a private RNG.

        With held-out images (``data.val_dir``) the same measure also runs on as many training
        images (batches marked ``probe``), so ``val/gap`` shows over-fitting as it starts.
        """
        if self._val_cache is not None:
            return self._val_cache
        if self.val_dataset is None:
            count = min(len(self.train_dataset), self.cfg.data.val_images)
            self._val_cache = self._loss_batches(self.train_dataset, count, probe=False)
        else:
            count = min(len(self.train_dataset), len(self.val_dataset))
            held_out = self._loss_batches(self.val_dataset, len(self.val_dataset), probe=False)
            self._val_cache = held_out + self._loss_batches(self.train_dataset, count, probe=True)
        return self._val_cache

    @torch.no_grad()
    def _loss_batches(self, dataset, count: int, *, probe: bool) -> list[dict]:
        """One batch per image: its latents at every timestep of the grid, with fixed noise
        (the same noise sequence for held-out and training images, so only the images differ)."""
        if count == 0:
            return []
        items = [dataset.fixed_item(i) for i in _spread(len(dataset), count)]
        sched = self.base.noise_scheduler
        n_t = self.cfg.train.val_timesteps
        grid = torch.linspace(0, sched.config.num_train_timesteps - 1, n_t).round().long()
        generator = torch.Generator(device="cpu").manual_seed(self.cfg.train.seed + VALIDATION_SEED_OFFSET)
        batches = []
        for item in items:
            latents = self._validation_latents(item).float().cpu()
            noise = torch.randn((n_t, *latents.shape[1:]), generator=generator)
            batches.append(
                {
                    "latents": latents.expand(n_t, -1, -1, -1).contiguous(),
                    "noise": noise,
                    "timesteps": grid.clone(),
                    "caption": [item["caption"]] * n_t,
                    "probe": probe,
                }
            )
        return batches

    def _validation_latents(self, item: dict) -> torch.Tensor:
        """The mean latents [1, C, h, w] of one item, through the latent cache like training's."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        cached = "latent_params" in item
        one = {
            "pixel_at": [] if cached else [0],
            "latent_at": [0] if cached else [],
            "cache_key": [] if cached else [item.get("cache_key")],
            **({"latent_params": item["latent_params"][None]} if cached else {"pixel_values": item["pixel_values"][None]}),
        }
        params = self._latent_params(one)
        return DiagonalGaussianDistribution(params).mode() * self.base.vae.config.scaling_factor

    @torch.no_grad()
    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        device, sched = self.trainer.device, self.base.noise_scheduler
        latents = batch["latents"].to(device)
        noise = batch["noise"].to(device)
        timesteps = batch["timesteps"].to(device)
        noisy = sched.add_noise(latents, noise, timesteps)
        text = self.encode_prompts(batch["caption"])
        pred = self._predict(noisy, timesteps, text)
        target = prediction_target(sched, latents, noise, timesteps)
        loss = per_sample_loss(pred, target, timesteps, sched, None).mean()
        key = "train_loss" if batch.get("probe") else "loss"
        return {key: loss, "n": torch.tensor(float(latents.shape[0]))}

    def validation_summary(self, metrics: dict[str, float]) -> dict[str, float]:
        """Held-out minus training-image loss: near 0 while the model generalises, growing as it memorises."""
        if "val/loss" in metrics and "val/train_loss" in metrics:
            metrics["val/gap"] = metrics["val/loss"] - metrics["val/train_loss"]
        return metrics

    # ----- samples and evaluation ------------------------------------------------------
    @contextmanager
    def inference_pipeline(self, sampler: str):
        from sdexp.samplers import make_scheduler

        modules = self.trainable_modules()
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        self.on_validation_start()
        try:
            pipe = self.base.pipeline(make_scheduler(sampler, self.base.noise_scheduler.config))
            pipe.set_progress_bar_config(disable=True)
            with torch.no_grad():
                yield pipe
        finally:
            self.on_validation_end()
            for m, mode in zip(modules, modes, strict=True):
                m.train(mode)

    @torch.no_grad()
    def sample_images(self, prompts: list[str], seed: int) -> list:
        """One image per prompt from seed ``seed + i``, in an isolated RNG."""
        from sdexp.base_generations import SamplingSettings, generate_images
        from sdexp.rng import isolated_rng

        t = self.cfg.train
        settings = SamplingSettings(
            sampler=t.sample_scheduler, steps=t.sample_steps, guidance=t.sample_guidance
        )
        device = self.trainer.device
        with isolated_rng(device), self.inference_pipeline(t.sample_scheduler) as pipe:
            return [
                generate_images(pipe, [prompt], [seed + i], settings, self.resolution)[0]
                for i, prompt in enumerate(prompts)
            ]

    def on_save_checkpoint(self, ckpt_dir: Path, step: int) -> dict[str, Path]:
        raise NotImplementedError


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (deterministic)."""
    if k >= n:
        return list(range(n))
    return sorted({math.floor(i * n / k) for i in range(k)})
