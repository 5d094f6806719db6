"""Probes for what a fine-tune costs: forgetting (prior prompts, checkpoint against its base) and
prompt drift (prompts without the new token).

The base's images come from ``BaseGenerations`` (generated once per base, settings, prompt and
seed); the checkpoint's from the same prompts and seeds, so the two sets pair image for image.
"""

from __future__ import annotations

from sdexp.metrics.scores import clip_t, distribution_distance


def forgetting_probe(clip, base_images, checkpoint_images, prompts: list[str]) -> dict[str, float]:
    """CLIP-T of the base and of the checkpoint on the prior prompts, its change, and FID/KID between
    the two image sets (0 when nothing was forgotten; left out below two images a set)."""
    if not len(base_images) == len(checkpoint_images) == len(prompts):
        raise ValueError("base images, checkpoint images and prompts must pair one to one")
    base_t, ckpt_t = clip_t(clip, base_images, prompts), clip_t(clip, checkpoint_images, prompts)
    out = {
        "forgetting/clip_t_base": base_t,
        "forgetting/clip_t": ckpt_t,
        "forgetting/clip_t_change": ckpt_t - base_t,
        "forgetting/samples": float(len(prompts)),
    }
    if len(prompts) >= 2:  # FID/KID need a covariance: one image a set gives none (the caller warns)
        dist = distribution_distance(clip, base_images, checkpoint_images)
        out.update({"forgetting/fid": dist.fid, "forgetting/kid": dist.kid})
    return out


def prompt_drift(clip, images, prompts: list[str], token: str) -> float:
    """CLIP-T on prompts that do not contain ``token`` (does the concept leak into other prompts?)."""
    pairs = [(img, p) for img, p in zip(images, prompts, strict=True) if token not in p.split()]
    if not pairs:
        raise ValueError(f"every prompt contains {token!r}; prompt drift needs prompts without it")
    return clip_t(clip, [img for img, _ in pairs], [p for _, p in pairs])
