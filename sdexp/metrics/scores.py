"""Scores of image sets with any ``ClipModel``: prompt fidelity (CLIP-T), subject fidelity (CLIP-I),
memorisation (nearest training image), and distribution distances (FID, KID) through clean-fid.

Each takes images (PIL) or features and returns plain numbers, so the evaluation callback, `sdexp
eval` and the benchmarks share one definition. FID/KID here use the CLIP image tower as clean-fid's
custom feature extractor (no Inception weights can be fetched offline); values are only comparable
between runs scored with the same extractor, and the sample counts are reported with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# FID's covariance needs more samples than feature dimensions; KID is meant for small sets.
FEW_SAMPLES = 50


def clip_t(clip, images, prompts: list[str]) -> float:
    """Mean CLIP score of each image with its prompt, 100 × max(cos, 0) (torchmetrics' convention)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    return float(clip.score(images, prompts).mean())


def clip_i(clip, generated, references) -> float:
    """DreamBooth's CLIP-I: mean cosine similarity over all (generated, reference) pairs."""
    return mean_similarity(clip.encode_images(generated), clip.encode_images(references))


def mean_similarity(features_a, features_b) -> float:
    """Mean cosine over all pairs of two sets of L2-normalised embeddings (CLIP-I, DINO)."""
    return float((features_a @ features_b.T).mean())


def memorisation(clip, generated, training, threshold: float = 0.95) -> dict[str, float]:
    """For each generated image its highest similarity to any training image; the share above
    ``threshold`` is the share of (near-)copies."""
    return nearest_neighbours(clip.encode_images(generated), clip.encode_images(training), threshold)


def nearest_neighbours(generated_features, training_features, threshold: float = 0.95) -> dict[str, float]:
    """``memorisation`` on embeddings already computed (the evaluator encodes training images once)."""
    nearest = (generated_features @ training_features.T).max(dim=1).values
    return {
        "nearest_mean": float(nearest.mean()),
        "nearest_max": float(nearest.max()),
        "copy_share": float((nearest >= threshold).float().mean()),
    }


@dataclass
class DistributionDistance:
    fid: float
    kid: float
    kid_std: float
    samples_a: int
    samples_b: int
    feature_dim: int

    @property
    def warning(self) -> str | None:
        n = min(self.samples_a, self.samples_b)
        if n < max(FEW_SAMPLES, self.feature_dim):
            return (
                f"FID from {n} samples of {self.feature_dim}-dim features is biased and noisy; "
                "compare KID, or generate more images"
            )
        return None


def image_features(clip, images) -> np.ndarray:
    """The CLIP image embeddings as a float64 array (clean-fid's custom feature extractor role)."""
    return clip.encode_images(images).double().cpu().numpy()


def fid_kid(features_a: np.ndarray, features_b: np.ndarray, seed: int = 0) -> DistributionDistance:
    """FID and KID between two feature sets, by clean-fid's formulas; KID's subsets are seeded."""
    import warnings

    from cleanfid.fid import frechet_distance, kernel_distance
    from scipy import linalg as scipy_linalg

    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"need two [N, D] feature sets with N >= 2 and the same D, got {a.shape} and {b.shape}"
        )
    with warnings.catch_warnings():  # few samples: singular covariances; DistributionDistance.warning says so
        warnings.simplefilter("ignore", category=getattr(scipy_linalg, "LinAlgWarning", RuntimeWarning))
        fid = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    state = np.random.get_state()  # clean-fid draws KID's subsets from numpy's global RNG
    try:
        np.random.seed(seed)
        kid = kernel_distance(a, b, num_subsets=100, max_subset_size=1000)
        half = max(2, min(len(a), len(b)) // 2)  # the spread over half-size subsets, reported with it
        spread = [kernel_distance(a, b, num_subsets=1, max_subset_size=half) for _ in range(50)]
    finally:
        np.random.set_state(state)
    return DistributionDistance(
        fid=float(np.real(fid)),
        kid=float(kid),
        kid_std=float(np.std(spread)),
        samples_a=len(a),
        samples_b=len(b),
        feature_dim=a.shape[1],
    )


def distribution_distance(clip, images_a, images_b, seed: int = 0) -> DistributionDistance:
    """FID/KID between two image sets in ``clip``'s image-embedding space."""
    return fid_kid(image_features(clip, images_a), image_features(clip, images_b), seed)
