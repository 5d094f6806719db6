"""Aspect-ratio buckets: train each image near its own shape instead of cropping it square.

Kohya's scheme: a list of (width, height) sizes, multiples of ``step``, each no bigger in area than
``resolution`` squared; each image goes to the bucket whose aspect ratio is nearest its own, is
resized to cover it and loses only the rounding remainder. A batch holds one bucket, so its
tensors stack. Pure Python (no torch, no Pillow): the config validation imports it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

from sdexp.data.options import BucketOptions
from sdexp.errors import ConfigError, UserError

Size = tuple[int, int]  # (width, height)


def check_bucket_options(
    options: BucketOptions, resolution: int | None = None, *, prefix: str = "data.buckets"
) -> None:
    """Raise a one-line ConfigError naming the first bad ``prefix.*`` key.

    The bounds against ``resolution`` are checked only when buckets are enabled and the
    resolution is known (it may come from the model family at run time)."""
    step = options.step
    if isinstance(step, bool) or not isinstance(step, int) or step <= 0 or step % 8:
        raise ConfigError(f"{prefix}.step: must be a positive multiple of 8, e.g. 64 (got {step!r})")
    for key in ("min_resolution", "max_resolution"):
        value = getattr(options, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < step or value % step:
            raise ConfigError(
                f"{prefix}.{key}: must be a multiple of {prefix}.step ({step}) and at least it (got {value!r})"
            )
    lo, hi = options.min_resolution, options.max_resolution
    if lo > hi:
        raise ConfigError(f"{prefix}.min_resolution: {lo} is above {prefix}.max_resolution ({hi})")
    if options.enabled and resolution is not None and not lo <= resolution <= hi:
        raise ConfigError(
            f"{prefix}: the training resolution {resolution} must lie within "
            f"{prefix}.min_resolution..max_resolution ({lo}..{hi}); widen them or change the resolution"
        )


def make_buckets(resolution: int, options: BucketOptions) -> list[Size]:
    """Every maximal (w, h): for each width a multiple of ``step`` within [min, max], the tallest
    height (a multiple of ``step``, within [min, max]) with w*h <= resolution**2; plus the square.

    Sorted by aspect ratio, then width."""
    check_bucket_options(options, resolution)
    step, lo, hi = options.step, options.min_resolution, options.max_resolution
    area = resolution * resolution
    sizes: set[Size] = set()
    for w in range(lo, hi + 1, step):
        h = min(hi, area // w // step * step)
        if h >= lo:
            sizes.update({(w, h), (h, w)})
    side = resolution // step * step
    if lo <= side <= hi:
        sizes.add((side, side))
    if not sizes:
        raise ConfigError(
            f"data.buckets: no bucket between {lo} and {hi} px fits {resolution}x{resolution}; "
            "lower data.buckets.min_resolution"
        )
    return sorted(sizes, key=lambda s: (s[0] / s[1], s[0]))


def _round_down(value: float, step: int) -> int:
    return max(step, int(value) // step * step)


def assign_bucket(
    width: int, height: int, buckets: Sequence[Size], options: BucketOptions, *, resolution: int | None = None
) -> Size:
    """The bucket for a ``width`` x ``height`` image: the nearest aspect ratio (log distance, so
    portrait and landscape are treated alike; ties go to the larger bucket).

    With ``no_upscale``, an image smaller in area than ``resolution``**2 (default: the largest
    bucket's area) gets its own size rounded down to ``step`` (and shrunk to ``max_resolution``):
    never enlarged, cropped by less than ``step`` per axis."""
    if not buckets:
        raise ValueError("assign_bucket needs at least one bucket (see make_buckets)")
    area = resolution * resolution if resolution else max(w * h for w, h in buckets)
    if options.no_upscale and width * height < area:
        shrink = min(1.0, options.max_resolution / max(width, height))
        return _round_down(width * shrink, options.step), _round_down(height * shrink, options.step)
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1], b[0]))


def target_sizes(sizes: Sequence[Size], resolution: int, options: BucketOptions | None) -> list[Size]:
    """The training size of each (width, height): its bucket, or the ``resolution`` square when
    buckets are off. One function for the dataset and ``sdexp prepare``, so both agree."""
    if options is None or not options.enabled:
        return [(resolution, resolution)] * len(sizes)
    buckets = make_buckets(resolution, options)
    return [assign_bucket(w, h, buckets, options, resolution=resolution) for w, h in sizes]


class BucketBatchSampler:
    """Batches of dataset indices, every batch from one bucket (so tensors stack).

    Each index appears ``repeats[i]`` times an epoch (default once); the order within each bucket
    and the order of the batches are shuffled by (seed, epoch) alone: call ``set_epoch`` before
    each epoch. Pass as ``DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)``.

    With ``num_replicas`` processes (one run on several GPUs) the sampler builds the global batches
    of ``num_replicas * batch_size`` items that one process with that batch size would, in the
    same order, and yields this process's slice ``rank`` of each: every process sees as many
    batches, the same bucket at each step, and the processes together see exactly the
    single-process batch. A bucket's last, partial global batch is padded to a multiple of
    ``num_replicas`` with its own first items (as torch's DistributedSampler pads), so every
    process holds as many items and the averaged gradient weighs each item alike.
    """

    def __init__(
        self,
        buckets_per_item: Sequence[Size],
        batch_size: int,
        *,
        seed: int,
        drop_last: bool = False,
        repeats: Sequence[int] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise UserError(f"train.batch_size must be a positive integer (got {batch_size!r})")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} of {num_replicas} processes")
        n = len(buckets_per_item)
        repeats = [1] * n if repeats is None else [int(r) for r in repeats]
        if len(repeats) != n:
            raise ValueError(f"repeats has {len(repeats)} entries for {n} items")
        if any(r < 0 for r in repeats):
            raise UserError(f"repeats must be >= 0 (got {min(repeats)})")
        self.batch_size, self.seed, self.drop_last, self.epoch = batch_size, int(seed), bool(drop_last), 0
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.global_batch_size = batch_size * self.num_replicas
        self._groups: dict[Size, list[int]] = {}
        for i, bucket in enumerate(buckets_per_item):
            self._groups.setdefault((int(bucket[0]), int(bucket[1])), []).extend([i] * repeats[i])
        if self.drop_last and n and len(self) == 0:
            raise UserError(
                f"no bucket holds a full batch of {self.global_batch_size} (largest: "
                f"{max(len(v) for v in self._groups.values())}); lower train.batch_size or keep partial batches"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _count(self, n: int) -> int:
        size = self.global_batch_size
        return n // size if self.drop_last else -(-n // size)

    def __len__(self) -> int:
        return sum(self._count(len(v)) for v in self._groups.values())

    def global_batches(self) -> list[list[int]]:
        """This epoch's batches of every process together, in training order."""
        rng = random.Random(f"sdexp-buckets:{self.seed}:{self.epoch}")
        size = self.global_batch_size
        batches: list[list[int]] = []
        for bucket in sorted(self._groups):
            indices = list(self._groups[bucket])
            rng.shuffle(indices)
            for start in range(0, self._count(len(indices)) * size, size):
                batches.append(indices[start : start + size])
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        if self.num_replicas == 1:
            return iter(self.global_batches())
        return iter(self._slice(batch) for batch in self.global_batches())

    def _slice(self, batch: list[int]) -> list[int]:
        """This process's share of a global batch (a short one padded with its own first items)."""
        per = -(-len(batch) // self.num_replicas)
        padded = [batch[i % len(batch)] for i in range(per * self.num_replicas)]
        return padded[self.rank * per : (self.rank + 1) * per]

    @property
    def bucket_counts(self) -> dict[Size, int]:
        """Samples per bucket an epoch (repeats included)."""
        return {b: len(v) for b, v in sorted(self._groups.items())}
