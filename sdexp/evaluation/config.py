"""The ``eval`` section of a run config: what is generated at each checkpoint, how it is scored,
and the objective(s) that pick the best checkpoint.

Metric names are what the loggers see (``eval/clip_i``, ``eval/forgetting/kid``, ``val/gap``);
``expected_metrics`` lists the ones a config will produce, so an objective, a constraint or an
early-stopping monitor naming anything else fails at the door, before a model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from sdexp.errors import ConfigError
from sdexp.validation import choice, positive

DIRECTIONS = ("maximize", "minimize")
FID_FEATURES = ("clip", "inception")
VALIDATION_METRICS = ("val/loss", "val/train_loss", "val/gap")


@dataclass
class ObjectiveTerm:
    metric: str = MISSING
    weight: float = 1.0


@dataclass
class ObjectiveConstraint:
    """``metric`` must stay within [min, max] (either bound may be null)."""

    metric: str = MISSING
    min: float | None = None
    max: float | None = None


@dataclass
class ObjectiveConfig:
    """A weighted sum of metrics to maximise or minimise, subject to constraints.

    A checkpoint that breaks a constraint never beats one that keeps them all; among those that
    break one, the smaller total violation wins.
    """

    name: str = "subject"
    direction: str = "maximize"
    terms: list[ObjectiveTerm] = field(default_factory=lambda: [ObjectiveTerm(metric="eval/clip_i")])
    constraints: list[ObjectiveConstraint] = field(default_factory=list)


@dataclass
class EvalConfig:
    """Scoring at step 0 (the base), at every checkpoint and at the end."""

    enabled: bool = True
    clip: str = "auto"  # auto = the model's own clip/ (tiny_shapes); open_clip:MODEL:TAG|PATH; a folder
    dino: str | None = None  # a local DINO/DINOv2 folder (transformers): adds eval/dino
    at_start: bool = True  # score the base at step 0 (the reference every checkpoint is read against)
    prompts: list[str] = field(default_factory=list)  # subject prompts; empty = the training captions
    images: int = 8  # subject images per evaluation (prompts cycled, seeds seed+i)
    # Without the subject: forgetting and drift. null = derived (class prompts, the captions without
    # the token, the model's general prompts; see sdexp/evaluation/prior_prompts.py); [] = none.
    prior_prompts: list[str] | None = None
    prior_images: int = 0  # 0 = one per given prompt; derived prompts: at least half eval.images (and 2)
    token: str | None = None  # the subject's token; prior prompts must not contain it
    reference_dir: str | None = None  # subject images for CLIP-I/DINO/FID; null = data.dir
    sampler: str = "dpmpp_2m"
    steps: int = 20
    guidance: float = 7.5
    seed: int = 0
    batch_size: int = 8
    copy_threshold: float = 0.95  # memorisation: a generated image this close to a training one is a copy
    fid: bool = True
    fid_features: str = "clip"  # clip (works offline) | inception (clean-fid's InceptionV3 weights)
    inception_weights: str | None = None
    save_images: bool = True  # grids under eval/ in the run folder (and to W&B)
    objectives: list[ObjectiveConfig] = field(default_factory=lambda: [ObjectiveConfig()])


def expected_metrics(e: EvalConfig, *, held_out: bool) -> set[str]:
    """Names a run with this config logs at each checkpoint (``held_out``: data.val_dir is set)."""
    names = {"val/loss"} | ({"val/train_loss", "val/gap"} if held_out else set())
    if not e.enabled:
        return names
    names |= {"eval/clip_t", "eval/clip_i"}
    names |= {f"eval/memorisation/{k}" for k in ("nearest_mean", "nearest_max", "copy_share")}
    if e.dino:
        names.add("eval/dino")
    if e.fid:
        names |= {"eval/fid", "eval/kid", "eval/fid_samples"}
    if e.prior_prompts is None or e.prior_prompts:  # derived prompts are never empty
        names |= {"eval/prompt_drift"}
        names |= {f"eval/forgetting/{k}" for k in ("clip_t_base", "clip_t_change", "samples", "subject_leak")}
        names |= {"eval/forgetting/fid", "eval/forgetting/kid"}
    return names


# FID/KID need two samples a set at the very least (a covariance); fewer is skipped with a warning.
MIN_DISTANCE_SAMPLES = 2
DISTANCE_METRICS = ("eval/fid", "eval/kid")
PRIOR_DISTANCE_METRICS = ("eval/forgetting/fid", "eval/forgetting/kid")


def prior_image_count(e: EvalConfig) -> int | None:
    """Images a scoring makes for the prior prompts: None when derived (known once data is read;
    at least ``e.images``)."""
    if e.prior_prompts is None:  # derived: see sdexp.evaluation.prior_prompts (at least this many)
        return e.prior_images or max(-(-e.images // 2), MIN_DISTANCE_SAMPLES)
    return e.prior_images or len(e.prior_prompts)


def objective_metric_names(e: EvalConfig) -> set[str]:
    return {t.metric for o in e.objectives for t in o.terms} | {
        c.metric for o in e.objectives for c in o.constraints
    }


def validate_eval(e: EvalConfig, *, held_out: bool, samplers, prefix: str = "eval") -> None:
    """Ranges, choices and metric names; raises ConfigError naming the key."""
    positive(f"{prefix}.images", e.images)
    positive(f"{prefix}.prior_images", e.prior_images, allow_zero=True)
    positive(f"{prefix}.steps", e.steps)
    positive(f"{prefix}.guidance", e.guidance, allow_zero=True)
    positive(f"{prefix}.batch_size", e.batch_size)
    choice(f"{prefix}.sampler", e.sampler, tuple(samplers))
    choice(f"{prefix}.fid_features", e.fid_features, FID_FEATURES)
    if not 0.0 < e.copy_threshold <= 1.0:
        raise ConfigError(f"{prefix}.copy_threshold: must be in (0, 1] (got {e.copy_threshold})")
    if e.token and e.prior_prompts:
        leaking = [p for p in e.prior_prompts if e.token in p.split()]
        if leaking:
            raise ConfigError(
                f"{prefix}.prior_prompts: {leaking[0]!r} contains the token {e.token!r}; prior prompts "
                "measure what the base knew, so leave the token out of them"
            )
    if not e.objectives:
        raise ConfigError(f"{prefix}.objectives: give at least one objective")
    known = expected_metrics(e, held_out=held_out)
    seen = set()
    for i, o in enumerate(e.objectives):
        key = f"{prefix}.objectives.{i}"
        if o.name in seen:
            raise ConfigError(f"{key}.name: {o.name!r} is used twice; objective names must differ")
        seen.add(o.name)
        choice(f"{key}.direction", o.direction, DIRECTIONS)
        if not o.terms:
            raise ConfigError(f"{key}.terms: an objective needs at least one term")
        for kind, items in (("terms", o.terms), ("constraints", o.constraints)):
            for j, item in enumerate(items):
                if item.metric not in known:
                    raise ConfigError(
                        f"{key}.{kind}.{j}.metric: {item.metric!r} is not logged by this run; "
                        f"choose one of {', '.join(sorted(known))}"
                        + ("" if e.enabled else " (eval.enabled is false: only validation metrics)")
                        + (
                            ""
                            if held_out or not item.metric.startswith(("val/gap", "val/train"))
                            else " (val/gap and val/train_loss need data.val_dir)"
                        )
                    )
        for j, item in enumerate([*o.terms, *o.constraints]):
            _check_sample_count(e, item.metric, f"{key}.{'terms' if j < len(o.terms) else 'constraints'}")
        for j, c in enumerate(o.constraints):
            if c.min is None and c.max is None:
                raise ConfigError(f"{key}.constraints.{j}: give min, max or both")
            if c.min is not None and c.max is not None and c.min > c.max:
                raise ConfigError(f"{key}.constraints.{j}: min {c.min} is above max {c.max}")


def _check_sample_count(e: EvalConfig, metric: str, key: str) -> None:
    """An objective on FID/KID needs the images to compute it at every checkpoint."""
    if metric in DISTANCE_METRICS and e.images < MIN_DISTANCE_SAMPLES:
        raise ConfigError(
            f"{key}: {metric} needs at least {MIN_DISTANCE_SAMPLES} images a scoring; set eval.images >= 2"
        )
    count = prior_image_count(e)
    if metric in PRIOR_DISTANCE_METRICS and count is not None and count < MIN_DISTANCE_SAMPLES:
        raise ConfigError(
            f"{key}: {metric} needs at least {MIN_DISTANCE_SAMPLES} prior images a scoring (this config makes "
            f"{count}); set eval.prior_images >= 2"
        )
