"""The ``data.*`` sub-sections of the run config: buckets, captions and caches.

They live here, beside the code that reads them; ``sdexp.config.DataConfig`` nests them so Hydra
types and overrides them like any other key (``data.buckets.enabled=true``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BucketOptions:
    """Aspect-ratio buckets with kohya's parameters; one bucket per batch."""

    enabled: bool = False
    min_resolution: int = 256  # kohya min_bucket_reso
    max_resolution: int = 1024  # kohya max_bucket_reso
    step: int = 64  # kohya bucket_reso_steps
    no_upscale: bool = False  # kohya bucket_no_upscale: small images get a bucket no larger than themselves


@dataclass
class CaptionOptions:
    """How a caption becomes the text the model sees, per step (seeded by run seed, epoch and item)."""

    template: str = "{caption}"  # e.g. "{token} dog, {caption}"; {token} = data.token
    shuffle_tags: bool = False  # shuffle comma-separated tags ...
    keep_tokens: int = 0  # ... keeping the first N in place
    tag_dropout: float = 0.0  # drop each (unkept) tag with this probability
    dropout: float = 0.0  # replace the whole caption by "" with this probability
    separator: str = ","


@dataclass
class CacheOptions:
    """Encoded latents and text embeddings on disk, keyed by content, transform and model."""

    latents: bool = False
    text: bool = False
    dir: str | None = None  # null = $SDEXP_CACHE or ~/.cache/sdexp


@dataclass
class MaskOptions:
    """Per-image loss masks, white = learn: ``NAME.mask.png`` beside ``NAME.jpg``, or in ``dir``.

    Masks are used wherever one is found, so adding mask files is all it takes; ``required`` makes
    an image without one an error instead of training on its whole picture."""

    enabled: bool = True  # false = ignore every mask file and alpha channel (a sweep's unmasked arm)
    dir: str | None = None  # mirrors the data folder: DIR/sub/NAME.png masks DATA/sub/NAME.jpg
    required: bool = False  # every training image must have a mask
    unmasked_weight: float = 0.0  # loss weight where the mask is black (0 = not learned at all)
    from_alpha: bool = False  # an image's alpha channel is its mask (a mask file still wins)
