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
from sdexp.data import collate, load_dataset
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

    # ----- set-up -------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        cfg = self.cfg
        model_ref = cfg.model.path or cfg.model.name
        return cfg.train.resolution or cfg.model.resolution or native_resolution(model_ref, cfg.model.family)

    def load_data(self) -> None:
        """Scan and validate the data folder(s); fails before any model is loaded."""
        d, t = self.cfg.data, self.cfg.train
        if not d.dir:
            from sdexp.errors import ConfigError

            raise ConfigError("data.dir: no data folder given; pass data.dir=DIR (a folder of images)")
        common = dict(
            resolution=self.resolution,
            default_prompt=d.prompt,
            caption_extension=d.caption_extension,
            skip_bad=d.skip_bad,
            seed=t.seed,
        )
        self.train_dataset = load_dataset(d.dir, crop=d.crop, flip=d.flip, **common)
        self.val_dataset = None
        if d.val_dir:
            self.val_dataset = load_dataset(
                d.val_dir, crop="center", flip=False, setting="data.val_dir", **common
            )

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
        self.configure_adapters()
        device = trainer.device
        for module in (self.base.unet, self.base.vae, self.base.text_encoder):
            module.to(device)
        if cfg.train.gradient_checkpointing:
            self.base.unet.enable_gradient_checkpointing()
            if self.text_encoder_trains:
                self.base.text_encoder.gradient_checkpointing_enable()
        self._generator = torch.Generator(device=device).manual_seed(cfg.train.seed)
        # diffusers' `.dtype` walks every submodule on each read (ms per step): read it once.
        self._unet_dtype = self.base.unet.dtype
        self._vae_dtype = self.base.vae.dtype

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
        generator = torch.Generator().manual_seed(self.cfg.train.seed)
        return torch.utils.data.DataLoader(
            self.train_dataset,
            batch_size=self.cfg.train.batch_size,
            shuffle=True,
            drop_last=len(self.train_dataset) >= self.cfg.train.batch_size,
            collate_fn=collate,
            num_workers=self.cfg.data.num_workers,
            generator=generator,
        )

    def on_train_epoch_start(self, epoch: int) -> None:
        self.train_dataset.set_epoch(epoch)

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
        ids = self.token_ids(captions).to(self.trainer.device)
        return self._text_encoder_call(ids)[0]

    def encode_images(self, pixel_values: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """VAE latents: a sample with ``generator``, the mean when ``generator`` is None."""
        vae = self.base.vae
        pixels = pixel_values.to(self.trainer.device, dtype=self._vae_dtype)
        with torch.no_grad():
            dist = vae.encode(pixels).latent_dist
            latents = dist.sample(generator=generator) if generator is not None else dist.mode()
        return latents * vae.config.scaling_factor

    def _predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        dtype = self._unet_dtype
        return self._unet_call(noisy.to(dtype), timesteps, text.to(dtype)).sample

    # ----- steps --------------------------------------------------------------------------
    def training_step(self, batch: dict, step: int) -> StepOutput:
        t, sched, gen = self.cfg.train, self.base.noise_scheduler, self._generator
        latents = self.encode_images(batch["pixel_values"], gen).float()
        noise = sample_noise(latents, gen, t.noise_offset)
        timesteps = sample_timesteps(latents.shape[0], sched.config.num_train_timesteps, gen, latents.device)
        noisy = sched.add_noise(latents, noise, timesteps)
        with torch.set_grad_enabled(self.text_encoder_trains):
            text = self.encode_prompts(list(batch["caption"]))
        pred = self._predict(noisy, timesteps, text)
        target = prediction_target(sched, latents, noise, timesteps)
        loss = per_sample_loss(pred, target, timesteps, sched, t.min_snr_gamma).mean()
        return StepOutput(loss=loss)

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
        items = [dataset[i] for i in _spread(len(dataset), count)]
        sched = self.base.noise_scheduler
        n_t = self.cfg.train.val_timesteps
        grid = torch.linspace(0, sched.config.num_train_timesteps - 1, n_t).round().long()
        generator = torch.Generator(device="cpu").manual_seed(self.cfg.train.seed + VALIDATION_SEED_OFFSET)
        batches = []
        for item in items:
            pixels = item["pixel_values"].unsqueeze(0)
            latents = self.encode_images(pixels, None).float().cpu()
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
