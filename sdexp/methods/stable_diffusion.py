"""What every Stable Diffusion method shares: encoding (through the caches), the denoising loss with
prior preservation, validation, samples. The data side is ``TrainingData`` (training_data.py).

A subclass says which parameters train (``configure_adapters``) and how they are saved
(``on_save_checkpoint``): LoRA/DoRA (lora.py) and the full UNet with EMA (full.py).
"""

from __future__ import annotations

import math
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch

from sdexp.config import RunConfig
from sdexp.methods.base import StepOutput, TrainingModule
from sdexp.methods.diffusion import (
    BatchShard,
    mask_weights,
    per_sample_loss,
    prediction_target,
    sample_noise,
    sample_timesteps,
)
from sdexp.methods.speedups import as_memory_format, check_compile, compile_blocks, set_memory_format
from sdexp.methods.training_data import TrainingData
from sdexp.models.base_pool import POOL
from sdexp.models.conditioning import Conditioning
from sdexp.models.loading import DTYPES, BaseModel

VALIDATION_SEED_OFFSET = 1_000_003  # keeps validation noise apart from training noise


def resolve_weight_dtype(model_dtype: str, mixed_precision: str) -> torch.dtype:
    """Frozen weights: the mixed-precision dtype under ``auto``, else the one asked for."""
    if model_dtype == "auto":
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    return DTYPES[model_dtype]


class StableDiffusionModule(TrainingData, TrainingModule):
    """Latent-diffusion training on a base of any family with a frozen VAE; the family encodes
    prompts (and SDXL's image geometry) into a ``Conditioning``."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.base: BaseModel | None = None
        self.train_dataset = None
        self._generator: torch.Generator | None = None
        self._val_cache: list[dict] | None = None
        self._token_cache: dict[str, tuple[torch.Tensor, ...]] = {}
        self._unet_call = None  # set once accelerate has prepared it
        self._text_encoder_calls: tuple = ()
        self._processes, self._process_index = 1, 0  # several: each keeps its rows of global draws
        self._channels_last = False  # train.channels_last, set in setup
        self._loss_fn = None  # the compiled per-sample loss under train.compile (None: per_sample_loss)
        self.latent_cache = self.text_cache = None  # on-disk encodings (data.cache), set in setup
        self._text_memo: dict[str, Conditioning] = {}
        self.cache_stats = {"latents_encoded": 0, "latents_from_cache": 0}
        self.class_images_generated = 0
        self.concepts: list = []  # set by load_data (a from-scratch stage has its own data)
        self.user_class_records: dict = {}
        self.masked_images = 0  # training images with a mask (set by load_data; run.json)
        self.images_seen: Counter[int] = Counter()  # per concept index, logged with several concepts

    # ----- set-up -------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        from sdexp.evaluation.setup import run_resolution

        return run_resolution(self.cfg)

    def setup(self, trainer) -> None:
        super().setup(trainer)
        cfg = self.cfg
        if self.train_dataset is None:
            self.load_data()
        check_compile(cfg.train.compile, trainer.device)
        weight_dtype = self.weight_dtype = resolve_weight_dtype(cfg.model.dtype, cfg.train.mixed_precision)
        device = trainer.device
        # A sweep worker lends the base it already holds (sdexp.models.base_pool); else it loads.
        self.base = POOL.borrow(cfg, weight_dtype, device, keeps_base=self.gives_base_back)
        if getattr(self.cfg.method, "name", None) == "dreambooth":
            self._warn_about_token()
        if self.user_class_records:
            self._attach_class_images()
        self.configure_adapters()
        for module in self.trainable_modules():
            module.to(device)  # adapters are created on the CPU
        if cfg.train.gradient_checkpointing:
            self.base.unet.enable_gradient_checkpointing()
            if self.text_encoder_trains:
                for encoder in self.base.text_encoders:
                    encoder.gradient_checkpointing_enable()
        self._channels_last = cfg.train.channels_last
        set_memory_format((self.base.unet, self.base.vae), self._channels_last)
        if cfg.train.compile:
            compile_blocks(self.base.unet)
            self._loss_fn = torch.compile(per_sample_loss)
        self._generator = torch.Generator(device=device).manual_seed(cfg.train.seed)
        acc = trainer.accelerator
        self._processes, self._process_index = acc.num_processes, acc.process_index
        # diffusers' `.dtype` walks every submodule on each read (ms per step): read it once.
        self._unet_dtype = self.base.unet.dtype
        self._vae_dtype = self.base.vae.dtype
        self._text_encoder_calls = self.base.text_encoders
        self._open_caches()

    def on_modules_prepared(self, modules: list[torch.nn.Module]) -> None:
        # Forward through accelerate's wrappers so DDP can sync gradients (same objects on one device).
        self._unet_call = modules[0]
        if self.text_encoder_trains:
            self._text_encoder_calls = tuple(modules[1 : 1 + len(self.base.text_encoders)])

    def configure_adapters(self) -> None:
        """Choose and wrap the trainable parameters (subclasses)."""
        raise NotImplementedError

    @property
    def text_encoder_trains(self) -> bool:
        return False

    @property
    def gives_base_back(self) -> bool:
        """Whether the base's own weights stay as loaded (adapters only), so a sweep worker can
        lend it to the next trial; a method training them (full fine-tune) says False."""
        return True

    # ----- encoding -----------------------------------------------------------------------
    def token_ids(self, captions: list[str]) -> tuple[torch.Tensor, ...]:
        """Padded token ids per text encoder, tokenized once per distinct caption."""
        family, cache = self.base.family, self._token_cache
        missing = [c for c in dict.fromkeys(captions) if c not in cache]
        if missing:
            ids = family.tokenize(self.base.tokenizers, missing)
            for i, caption in enumerate(missing):
                cache[caption] = tuple(t[i] for t in ids)
        return tuple(torch.stack([cache[c][k] for c in captions]) for k in range(len(self.base.tokenizers)))

    def encode_prompts(self, captions: list[str]) -> Conditioning:
        """The captions' text conditioning: encoded live, or from the text cache when it is on."""
        if self.text_cache is None:
            device = self.trainer.device
            ids = tuple(t.to(device) for t in self.token_ids(captions))
            with torch.set_grad_enabled(self.text_encoder_trains and torch.is_grad_enabled()):
                return self.base.family.encode(self._text_encoder_calls, ids)
        return Conditioning.cat(self._cached_text(captions))

    def conditioning(self, captions: list[str], batch: dict | None, prefix: str = "") -> Conditioning:
        """Text plus what the family conditions on besides it (SDXL: each item's geometry)."""
        text = self.encode_prompts(captions)
        geometry = None
        if self.base.family.needs_geometry and batch is not None:
            geometry = {k: batch[f"{prefix}{k}"] for k in ("original_size", "crop_top_left", "target_size")}
        return self.base.family.condition(text, geometry)

    def _cached_text(self, captions: list[str]) -> list[Conditioning]:
        """Frozen text-encoder outputs per caption: memory, then disk, then encoded (and stored)."""
        from sdexp.data.cache import caption_key

        memo, device = self._text_memo, self.trainer.device
        max_length = self.base.tokenizers[0].model_max_length
        missing = []
        for caption in dict.fromkeys(captions):
            if caption in memo:
                continue
            stored = self.text_cache.get_tensors(caption_key(caption, max_length))
            if stored is None:
                missing.append(caption)
            else:
                memo[caption] = Conditioning.from_tensors(stored).to(device)
        if missing:
            with torch.no_grad():
                ids = tuple(t.to(device) for t in self.token_ids(missing))
                encoded = self.base.family.encode(self._text_encoder_calls, ids)
            for caption, row in zip(missing, encoded.rows(), strict=True):
                self.text_cache.put_tensors(caption_key(caption, max_length), row.as_tensors())
                memo[caption] = row
        return [memo[c] for c in captions]

    def _latent_params(self, batch: dict, prefix: str = "") -> torch.Tensor:
        """VAE latent-distribution parameters [B, 2C, h, w] of one half of a batch: cached rows as
        they are, the others encoded now (and cached under their keys)."""
        device, vae = self.trainer.device, self.base.vae
        pixel_at, latent_at = batch[f"{prefix}pixel_at"], batch[f"{prefix}latent_at"]
        self.cache_stats["latents_encoded"] += len(pixel_at)
        self.cache_stats["latents_from_cache"] += len(latent_at)
        encoded = cached = None
        if pixel_at:
            pixels = batch[f"{prefix}pixel_values"].to(device, dtype=self._vae_dtype)
            with torch.no_grad():
                encoded = vae.encode(as_memory_format(pixels, self._channels_last)).latent_dist.parameters
            if self.latent_cache is not None:
                for key, row in zip(batch[f"{prefix}cache_key"], encoded, strict=True):
                    if key is not None:
                        self.latent_cache.put(key, row)
        if latent_at:
            cached = batch[f"{prefix}latent_params"].to(device, dtype=self._vae_dtype)
        if cached is None or encoded is None:  # one source, already in the batch's order
            # contiguous as a stacked batch is: the loss's reductions then sum in the same order
            return (encoded if cached is None else cached).contiguous()
        rows = dict(zip(pixel_at, encoded, strict=True)) | dict(zip(latent_at, cached, strict=True))
        return torch.stack([rows[i] for i in range(len(rows))])

    def _predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        dtype = self._unet_dtype
        noisy = as_memory_format(noisy.to(dtype), self._channels_last)
        return self._unet_call(noisy, timesteps, **cond.unet_kwargs(dtype)).sample

    @contextmanager
    def _unwrapped(self):
        """Validation calls the modules themselves, not accelerate's DDP wrappers: each process
        validates its own share of the batches, and a DDP forward may sync buffers, which needs
        every process to call it as often."""
        calls = self._unet_call, self._text_encoder_calls
        self._unet_call, self._text_encoder_calls = self.base.unet, self.base.text_encoders
        try:
            yield
        finally:
            self._unet_call, self._text_encoder_calls = calls

    # ----- steps --------------------------------------------------------------------------
    def training_step(self, batch: dict, step: int) -> StepOutput:
        """Instance loss (weighted by concept, and per pixel by the images' masks) plus
        ``prior_loss_weight`` × the class images' loss (class images have no mask)."""
        params, captions = self._latent_params(batch), list(batch["caption"])
        n, mask = params.shape[0], batch.get("mask")
        prior = None
        if "class_caption" in batch:
            class_params, class_captions = self._latent_params(batch, "class_"), list(batch["class_caption"])
            cond = self.conditioning(captions, batch)
            class_cond = self.conditioning(class_captions, batch, "class_")
            if class_params.shape[1:] == params.shape[1:]:
                # One UNet call over instance and class images together, as DreamBooth trains.
                both = Conditioning.cat([cond, class_cond])
                if mask is not None:  # class images learn everywhere
                    full = torch.full(
                        (len(class_params), *mask.shape[1:]), 255, dtype=mask.dtype, device=mask.device
                    )
                    mask = torch.cat([mask, full])
                parts = (n, len(class_params))  # how one process would lay the global batch out
                losses = self._denoising_losses(torch.cat([params, class_params]), both, mask, parts)
                instance, prior = losses[:n], losses[n:]
            else:
                instance = self._denoising_losses(params, cond, mask)
                prior = self._denoising_losses(class_params, class_cond)
        else:
            instance = self._denoising_losses(params, self.conditioning(captions, batch), mask)
        weights = batch["loss_weight"].to(instance.device, instance.dtype)
        loss = (instance * weights).mean()
        logs = self._concept_counts(batch["concept"])
        if prior is not None:  # tensors: the trainer reads them with the loss, once per log step
            logs["train/instance_loss"] = instance.detach().mean()
            logs["train/prior_loss"] = prior.detach().mean()
            loss = loss + self.prior_loss_weight * prior.mean()
        return StepOutput(loss=loss, logs=logs)

    def _denoising_losses(
        self,
        latent_params: torch.Tensor,
        cond: Conditioning,
        mask: torch.Tensor | None = None,
        parts: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """Per-sample denoising loss: latents drawn from the VAE distribution, fresh noise and
        timesteps; weighted per latent pixel by ``mask`` (uint8 [B, 1, H, W]) under ``data.mask``.
        Every draw is made for the global batch of all processes (``BatchShard``); ``parts``: the
        sizes of the batch's concatenated pieces (default: one piece)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
        from diffusers.utils.torch_utils import randn_tensor

        t, sched, gen = self.cfg.train, self.base.noise_scheduler, self._generator
        shard = BatchShard(parts or (len(latent_params),), self._process_index, self._processes)
        dist = DiagonalGaussianDistribution(latent_params)
        # DiagonalGaussianDistribution.sample, drawn for the global batch
        eps = randn_tensor(
            (shard.global_size, *dist.mean.shape[1:]),
            generator=gen,
            device=latent_params.device,
            dtype=latent_params.dtype,
        )
        latents = dist.mean + dist.std * shard.take(eps)
        latents = (latents * self.base.vae.config.scaling_factor).float()
        noise = sample_noise(latents, gen, t.noise_offset, shard)
        timesteps = sample_timesteps(
            len(latents), sched.config.num_train_timesteps, gen, latents.device, shard
        )
        noisy = sched.add_noise(latents, noise, timesteps)
        pred = self._predict(noisy, timesteps, cond)
        target = prediction_target(sched, latents, noise, timesteps)
        weights = None
        if mask is not None:
            size = latents.shape[-2:]
            weights = mask_weights(mask.to(latents.device), size, self.cfg.data.mask.unmasked_weight)
        return (self._loss_fn or per_sample_loss)(pred, target, timesteps, sched, t.min_snr_gamma, weights)

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
                    **{
                        k: torch.tensor([item[k]] * n_t)
                        for k in ("original_size", "crop_top_left", "target_size")
                    },
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
            **(
                {"latent_params": item["latent_params"][None]}
                if cached
                else {"pixel_values": item["pixel_values"][None]}
            ),
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
        with self._unwrapped():
            pred = self._predict(noisy, timesteps, self.conditioning(batch["caption"], batch))
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
        """One image per prompt from seed ``seed + i``, in an isolated RNG, in batches of
        ``eval.batch_size`` (each image from its own generator: batching does not change it)."""
        from sdexp.base_generations import SamplingSettings, generate_images
        from sdexp.rng import isolated_rng

        t = self.cfg.train
        settings = SamplingSettings(
            sampler=t.sample_scheduler, steps=t.sample_steps, guidance=t.sample_guidance
        )
        device = self.trainer.device
        seeds, batch = [seed + i for i in range(len(prompts))], self.cfg.eval.batch_size
        images = []
        with isolated_rng(device), self.inference_pipeline(t.sample_scheduler) as pipe:
            for i in range(0, len(prompts), batch):
                chunk = slice(i, i + batch)
                images += generate_images(pipe, prompts[chunk], seeds[chunk], settings, self.resolution)
        return images

    def on_save_checkpoint(self, ckpt_dir: Path, step: int) -> dict[str, Path]:
        raise NotImplementedError

    # ----- resuming -----------------------------------------------------------------------
    def training_state(self) -> dict:
        """The noise/timestep generator (training's own stream) and the counters logs and run.json show."""
        return {
            "generator": self._generator.get_state(),
            "images_seen": dict(self.images_seen),
            "cache_stats": dict(self.cache_stats),
        }

    def on_load_checkpoint(self, state: dict) -> None:
        self._generator.set_state(state["generator"])
        self.images_seen = Counter(state["images_seen"])
        self.cache_stats.update(state["cache_stats"])


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (deterministic)."""
    if k >= n:
        return list(range(n))
    return sorted({math.floor(i * n / k) for i in range(k)})
