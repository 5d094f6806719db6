"""Generate a checkpoint's prompt sets and score them: the one scoring path for the evaluation
callback (every checkpoint of every run and trial) and `sdexp eval` (any model or LoRA).

Subject prompts are scored for prompt fidelity (CLIP-T), subject fidelity against the reference
images (CLIP-I, DINO), copying (memorisation against the training images) and distance (FID/KID).
Prior prompts, generated with the same seeds by the base (cached by ``BaseGenerations``) and by the
checkpoint, give the forgetting probe and prompt drift. Every image comes from its own seeded
generator, so the checkpoint's images pair with the base's image for image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sdexp.base_generations import BaseGenerations, SamplingSettings, generate_images
from sdexp.errors import UserError
from sdexp.evaluation.config import MIN_DISTANCE_SAMPLES, EvalConfig
from sdexp.evaluation.prior_prompts import PriorPrompts
from sdexp.metrics.probes import forgetting_probe, prompt_drift
from sdexp.metrics.scores import clip_t, fid_kid, image_features, mean_similarity, nearest_neighbours


def resolve_clip_spec(spec: str, model_ref: str | Path) -> str | None:
    """``auto`` is the base model's own CLIP (a folder with clip/, e.g. tiny_shapes), else None."""
    if spec != "auto":
        return spec
    from sdexp.models.loading import resolve_model

    model_dir = resolve_model(model_ref)
    return str(model_dir) if (model_dir / "clip" / "config.json").exists() else None


def cycled(prompts: list[str], count: int, seed: int) -> tuple[list[str], list[int]]:
    """``count`` (prompt, seed) pairs: the prompts in turn, seeds seed, seed+1, ... (0 = one each)."""
    count = count or len(prompts)
    return [prompts[i % len(prompts)] for i in range(count)], [seed + i for i in range(count)]


@dataclass
class Evaluation:
    """One checkpoint's scores and the images they came from."""

    metrics: dict[str, float]
    subject: list = field(default_factory=list)
    subject_prompts: list[str] = field(default_factory=list)
    prior: list = field(default_factory=list)
    prior_prompts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


REFERENCE_SIDE = 512  # references are kept at most this small (shortest side): every judge resizes below it


def _load_images(paths: list[Path]) -> list:
    """The images, shrunk so that twenty 24-megapixel photos do not sit in memory at full size."""
    from PIL import Image

    from sdexp.data.transforms import load_rgb

    images = []
    for p in paths:
        img = load_rgb(p)
        scale = REFERENCE_SIDE / min(img.size)
        if scale < 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
        images.append(img)
    return images


class Evaluator:
    """Scores pipelines under one ``EvalConfig``; the judges and reference images load once."""

    def __init__(
        self,
        cfg: EvalConfig,
        *,
        base_model: str | Path,
        clip_spec: str,
        reference_paths: list[Path],
        training_paths: list[Path],
        subject_prompts: list[str],
        size: int,
        prior: PriorPrompts | None = None,
        device: str | torch.device = "cpu",
        generations_root: str | Path | None = None,
    ):
        from sdexp.metrics.clip_models import load_clip

        if not subject_prompts:
            raise UserError(
                "eval.prompts: no subject prompts (and the data has no captions); set eval.prompts"
            )
        self.cfg, self.size, self.device = cfg, size, torch.device(device)
        self.base_model = str(base_model)
        self.clip = load_clip(clip_spec, self.device)
        self.dino = None
        if cfg.dino:
            from sdexp.metrics.features import load_dino

            self.dino = load_dino(cfg.dino, self.device)
        self.inception = None
        if cfg.fid and cfg.fid_features == "inception":
            from sdexp.metrics.features import inception_features

            self.inception = inception_features(self.device, cfg.inception_weights)
        self.references = _load_images(reference_paths)
        self.training = _load_images(training_paths)
        if not self.references:
            raise UserError("eval.reference_dir: no reference images to score subject fidelity against")
        self.settings = SamplingSettings(
            sampler=cfg.sampler, steps=cfg.steps, guidance=cfg.guidance, size=size
        )
        self.subject_prompts, self.subject_seeds = cycled(subject_prompts, cfg.images, cfg.seed)
        if prior is None:  # the config's own prompts, as given
            given = list(cfg.prior_prompts or [])
            prior = PriorPrompts(given, cfg.prior_images or len(given), cfg.token, "eval.prior_prompts")
        self.prior = prior
        self.prior_prompts, self.prior_seeds = (
            cycled(prior.prompts, prior.images, cfg.seed) if prior.prompts else ([], [])
        )
        self._generations_root = generations_root
        self._base_prior: list | None = None
        self._base_prior_clip: torch.Tensor | None = None  # the base prior images, encoded once
        # What every checkpoint is compared with, encoded once.
        self._reference_clip = self.clip.encode_images(self.references)
        self._training_clip = self.clip.encode_images(self.training) if self.training else None
        self._reference_dino = self.dino.encode_images(self.references) if self.dino else None
        self._reference_fid = self._fid_features(self.references) if cfg.fid else None
        self.base_seconds = 0.0  # generating the base's prior images (0 when they were cached)
        self._prompt_encodings: dict = {}  # see evaluate(frozen_text=True)

    def _fid_features(self, images) -> np.ndarray:
        if self.inception is not None:
            return self.inception(images)
        return image_features(self.clip, images)

    def signature(self) -> str:
        """What the base's scores depend on: the same signature gives the same step-0 scores, so
        a sweep's trials score the base once (every fine-tune starts as its base)."""
        import hashlib
        import json
        from dataclasses import asdict

        from sdexp.models.fingerprint import model_fingerprint
        from sdexp.models.loading import resolve_model

        cfg = {k: v for k, v in asdict(self.cfg).items() if k != "objectives"}
        key = {
            "base": model_fingerprint(resolve_model(self.base_model)),
            "eval": cfg,
            "references": self._reference_clip.sum().item(),
            "training": self._training_clip.sum().item() if self._training_clip is not None else None,
            "prompts": self.subject_prompts,
            "size": self.size,
            "device": str(self.device),
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def generate(self, pipe, prompts: list[str], seeds: list[int]) -> list:
        out = []
        for i in range(0, len(prompts), self.cfg.batch_size):
            chunk = slice(i, i + self.cfg.batch_size)
            out += generate_images(pipe, prompts[chunk], seeds[chunk], self.settings, self.size)
        return out

    def base_prior_images(self) -> list:
        """The base's images for the prior prompts: from the cache, generated once when missing."""
        if self._base_prior is None:
            started = time.perf_counter()
            cache = BaseGenerations(
                self.base_model,
                self.settings,
                root=self._generations_root,
                device=str(self.device),
                batch_size=self.cfg.batch_size,
            )
            self._base_prior = cache.images(self.prior_prompts, self.prior_seeds)
            self.base_seconds = time.perf_counter() - started if cache.generated else 0.0
        return self._base_prior

    @torch.no_grad()
    def evaluate(self, pipe, *, frozen_text: bool = False) -> Evaluation:
        """Generate both prompt sets with ``pipe`` and score them. ``frozen_text``: the pipeline's
        text encoders are the run's frozen ones (no LoRA or new token trains them), so the prompt
        encodings of the first scoring serve every later one."""
        from contextlib import nullcontext

        from sdexp.evaluation.prompt_cache import cached_prompt_encodings

        started = time.perf_counter()
        cache = cached_prompt_encodings(pipe, self._prompt_encodings) if frozen_text else nullcontext()
        with cache:
            subject = self.generate(pipe, self.subject_prompts, self.subject_seeds)
            prior = self.generate(pipe, self.prior_prompts, self.prior_seeds) if self.prior_prompts else []
        result = self.score(subject, prior)
        result.seconds = time.perf_counter() - started
        return result

    def score(self, subject: list, prior: list) -> Evaluation:
        cfg, clip = self.cfg, self.clip
        subject_clip = clip.encode_images(subject)
        metrics = {
            "eval/clip_t": clip_t(clip, subject, self.subject_prompts),
            "eval/clip_i": mean_similarity(subject_clip, self._reference_clip),
        }
        if self.dino is not None:
            metrics["eval/dino"] = mean_similarity(self.dino.encode_images(subject), self._reference_dino)
        if self._training_clip is not None:
            copies = nearest_neighbours(subject_clip, self._training_clip, cfg.copy_threshold)
            metrics.update({f"eval/memorisation/{k}": v for k, v in copies.items()})
        warnings = []
        if cfg.fid:
            n = min(len(subject), len(self._reference_fid))
            if n < MIN_DISTANCE_SAMPLES:
                warnings.append(
                    f"eval/fid: skipped: FID/KID need {MIN_DISTANCE_SAMPLES} images a set, got {len(subject)} "
                    f"generated and {len(self._reference_fid)} reference; raise eval.images (and add references)"
                )
            else:
                dist = fid_kid(self._fid_features(subject), self._reference_fid, seed=cfg.seed)
                metrics.update(
                    {"eval/fid": dist.fid, "eval/kid": dist.kid, "eval/fid_samples": dist.samples_a}
                )
                if dist.warning:
                    warnings.append(f"eval/fid: {dist.warning}")
        if prior:
            base = self.base_prior_images()
            probe = forgetting_probe(clip, base, prior, self.prior_prompts)
            for key in ("clip_t_base", "clip_t_change", "fid", "kid", "samples"):
                if f"forgetting/{key}" in probe:
                    metrics[f"eval/forgetting/{key}"] = probe[f"forgetting/{key}"]
            if "forgetting/fid" not in probe:
                warnings.append(
                    f"eval/forgetting/fid: skipped: FID/KID need {MIN_DISTANCE_SAMPLES} prior images, got "
                    f"{len(prior)}; set eval.prior_images >= {MIN_DISTANCE_SAMPLES}"
                )
            # DreamBooth's language drift: how much more the prior (class) images look like the
            # subject than the base's did for the same prompts and seeds (0 = no leak).
            if self._base_prior_clip is None:
                self._base_prior_clip = clip.encode_images(base)
            metrics["eval/forgetting/subject_leak"] = mean_similarity(
                clip.encode_images(prior), self._reference_clip
            ) - mean_similarity(self._base_prior_clip, self._reference_clip)
            token = self.prior.token or "\0"  # prior prompts never hold the token
            metrics["eval/prompt_drift"] = prompt_drift(clip, prior, self.prior_prompts, token)
        return Evaluation(
            metrics={k: float(v) for k, v in metrics.items()},
            subject=subject,
            subject_prompts=self.subject_prompts,
            prior=prior,
            prior_prompts=self.prior_prompts,
            warnings=warnings,
        )
