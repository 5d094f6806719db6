"""Class images for DreamBooth's prior preservation: the user's, topped up from the base model.

The generated ones are ``BaseGenerations`` of the class prompt (keyed by the base's fingerprint,
the sampling settings, the prompt and the seed), so a second run, and every trial of a sweep on the
same base, reuses them instead of generating again. Seeds are ``class_seed + i``: asking for more
images later generates only the new ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sdexp.data.concepts import Concept
from sdexp.data.scan import ImageRecord, scan_folder


def user_class_records(
    concept: Concept, limit: int, *, caption_extension: str, skip_bad: bool
) -> list[ImageRecord]:
    """The concept's own class images (at most ``limit``), captioned with the class prompt unless a
    sidecar says otherwise; read before any model loads, so a bad folder fails early."""
    if concept.class_dir is None or limit == 0:
        return []
    records = scan_folder(
        concept.class_dir,
        default_prompt=concept.class_prompt,
        caption_extension=caption_extension,
        skip_bad=skip_bad,
        setting="method.class_dir",
    )
    return records[:limit]


def generated_class_records(
    concept: Concept,
    count: int,
    method,
    *,
    model_ref: str | Path,
    resolution: int,
    pipeline,
    device,
    notify: Callable[[str], object] = print,
) -> tuple[list[ImageRecord], int]:
    """``count`` class images from the base (cached); returns the records and how many were generated now."""
    from sdexp.base_generations import BaseGenerations, SamplingSettings

    if count <= 0:
        return [], 0
    settings = SamplingSettings(
        sampler=method.class_sampler,
        steps=method.class_steps,
        guidance=method.class_guidance,
        size=resolution,
    )
    cache = BaseGenerations(
        model_ref, settings, device=str(device), batch_size=method.class_batch_size, pipeline=pipeline
    )
    prompts = [concept.class_prompt] * count
    seeds = [method.class_seed + i for i in range(count)]
    todo = len(cache.missing(prompts, seeds))
    if todo:
        notify(
            f"class images for {concept.name}: generating {todo} of {count} with the base model ({cache.folder})"
        )

    def progress(done: int, total: int) -> None:
        notify(f"  class images {done}/{total}")

    paths = cache.ensure(prompts, seeds, progress=progress if todo else None)
    records = [ImageRecord(p, concept.class_prompt, resolution, resolution) for p in paths]
    return records, cache.generated
