"""What a base model generates for (prompt, seed), generated once and kept in the cache.

Forgetting probes compare a checkpoint with its base on fixed prior prompts, and DreamBooth's prior
preservation trains on class images from the base. Both are the same images for every run and
every sweep trial on that base, so they are keyed by the base's content fingerprint, the sampling
settings, the prompt and the seed, written atomically (PNG with A1111 parameters), and reused.

    cache = BaseGenerations("tiny_shapes", SamplingSettings(steps=20, guidance=4.0))
    paths = cache.ensure(prompts, seeds)        # generates only what is missing
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class SamplingSettings:
    sampler: str = "dpmpp_2m"
    steps: int = 20
    guidance: float = 7.5
    size: int | None = None  # None = the model's native resolution
    negative_prompt: str = ""

    def digest(self, size: int) -> str:
        text = repr(sorted({**asdict(self), "size": size}.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


class BaseGenerations:
    """Images of one base model under one ``SamplingSettings``, in ``root/<fingerprint>/<settings>/``."""

    def __init__(
        self,
        model: str | Path,
        settings: SamplingSettings = SamplingSettings(),
        *,
        root: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 8,
        pipeline=None,
    ):
        from sdexp.models.fingerprint import model_fingerprint
        from sdexp.models.loading import native_resolution, resolve_model
        from sdexp.models.tiny import cache_root

        self.model, self.settings, self.device, self.batch_size = str(model), settings, device, batch_size
        self.model_dir = resolve_model(model)
        self.size = settings.size or native_resolution(model)
        self.fingerprint = model_fingerprint(self.model_dir)
        root = Path(root) if root else cache_root() / "generations"
        self.folder = root / self.fingerprint / settings.digest(self.size)
        self._pipe = pipeline  # an already loaded pipeline of this base with the settings' sampler, or None
        self.generated = 0  # images this object had to generate (the rest came from the cache)

    def path(self, prompt: str, seed: int) -> Path:
        key = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]
        return self.folder / f"{key}-{seed}.png"

    def missing(self, prompts: list[str], seeds: list[int]) -> list[int]:
        return [
            i for i, (p, s) in enumerate(zip(prompts, seeds, strict=True)) if not self.path(p, s).exists()
        ]

    def ensure(
        self, prompts: list[str], seeds: list[int], progress: Callable[[int, int], None] | None = None
    ):
        """Paths of the image for each (prompt, seed), generating the missing ones in batches."""
        todo = self.missing(prompts, seeds)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            self._generate([prompts[i] for i in chunk], [seeds[i] for i in chunk])
            if progress:
                progress(min(start + self.batch_size, len(todo)), len(todo))
        return [self.path(p, s) for p, s in zip(prompts, seeds, strict=True)]

    def images(self, prompts: list[str], seeds: list[int]) -> list:
        from PIL import Image

        return [Image.open(p).convert("RGB") for p in self.ensure(prompts, seeds)]

    def _pipeline(self):
        if self._pipe is None:
            self._pipe, _ = sampling_pipeline(self.model, sampler=self.settings.sampler, device=self.device)
        return self._pipe

    def _generate(self, prompts: list[str], seeds: list[int]) -> None:
        from sdexp.png_info import format_parameters, write_png
        from sdexp.samplers import a1111_name

        s = self.settings
        images = generate_images(self._pipeline(), prompts, seeds, s, self.size)
        for prompt, seed, image in zip(prompts, seeds, images, strict=True):
            parameters = format_parameters(
                prompt,
                s.negative_prompt,
                steps=s.steps,
                sampler=a1111_name(s.sampler),
                cfg_scale=s.guidance,
                seed=seed,
                width=self.size,
                height=self.size,
                model=self.model,
                extra={"Model fingerprint": self.fingerprint},
            )
            write_png(image, self.path(prompt, seed), parameters)
            self.generated += 1


def sampling_pipeline(
    model: str | Path, *, sampler: str = "dpmpp_2m", lora: str | Path | None = None, device="cpu"
):
    """(pipeline, native resolution) of ``model`` with the ``sampler`` scheduler and no progress bar;
    ``lora`` is loaded through the same path as `sdexp generate`."""
    from sdexp.generate import check_loras, load_loras
    from sdexp.models.loading import load_base
    from sdexp.samplers import make_scheduler

    base = load_base(model)
    pipe = base.pipeline(make_scheduler(sampler, base.noise_scheduler.config))
    if lora is not None:
        load_loras(pipe, check_loras([(lora, 1.0)]), base.family)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device), base.native_resolution


@torch.no_grad()
def generate_images(
    pipe, prompts: list[str], seeds: list[int], settings: SamplingSettings, size: int
) -> list:
    """One image per (prompt, seed) from ``pipe`` (whose scheduler is ``settings.sampler``), each
    from its own generator, so a checkpoint's images pair with the base's image for image."""
    from sdexp.sampling import run_pipeline

    generators = [torch.Generator(device=pipe.device).manual_seed(seed) for seed in seeds]
    return run_pipeline(
        pipe,
        list(prompts),
        generators=generators,
        steps=settings.steps,
        guidance=settings.guidance,
        width=size,
        height=size,
        negative_prompt=settings.negative_prompt,
    )
