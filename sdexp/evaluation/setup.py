"""From a run config to the scoring of its checkpoints: the evaluator (or why there is none) and
the callback that keeps ``best/``. Checked before training starts, so a missing CLIP or a monitor
that cannot be measured fails in seconds, not after the first checkpoint.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sdexp.errors import ConfigError


def subject_prompts(e, captions: list[str]) -> list[str]:
    """``eval.prompts``, else the training captions, most frequent first (ties: first seen)."""
    if e.prompts:
        return list(e.prompts)
    counts = Counter(captions)
    return sorted(counts, key=lambda c: (-counts[c], captions.index(c)))


def rendered_captions(cfg, records) -> list[str]:
    """The captions as training sees them without the random parts: ``data.captions.template`` and
    ``{token}`` applied, so scoring prompts hold the trigger word (textual inversion's new token)."""
    import random
    from dataclasses import replace

    from sdexp.data.caption_policy import CaptionPolicy

    options = replace(cfg.data.captions, shuffle_tags=False, tag_dropout=0.0, dropout=0.0)
    policy = CaptionPolicy(options, cfg.data.token)
    return [policy.render(r.caption, random.Random(0)) for r in records]


def reference_paths(e, cfg) -> list[Path] | None:
    """``eval.reference_dir`` scanned (read-only), or None for the training images."""
    if not e.reference_dir:
        return None
    from sdexp.data.scan import scan_folder

    records = scan_folder(
        e.reference_dir, default_prompt="", skip_bad=cfg.data.skip_bad, setting="eval.reference_dir"
    )
    return [r.path for r in records]


def run_resolution(cfg) -> int:
    """The side a run trains and generates at: train.resolution, model.resolution, else the model's
    native one (from its configs; no weights are loaded). The training module asks here too."""
    from sdexp.models.loading import native_resolution

    m = cfg.model
    return (
        cfg.train.resolution
        or m.resolution
        or native_resolution(m.path or m.name, m.family, m.prediction_type)
    )


def build_evaluator(cfg, records, resolution: int, device, *, generations_root=None):
    """(Evaluator, None), or (None, why evaluation is off), for a run config and its training
    images (``records`` from the data scan: paths and captions)."""
    from sdexp.evaluation.scorer import Evaluator, resolve_clip_spec

    e = cfg.eval
    if not e.enabled:
        return None, "eval.enabled is false"
    model_ref = cfg.model.path or cfg.model.name
    spec = resolve_clip_spec(e.clip, model_ref)
    if spec is None:
        return None, (
            f"eval.clip=auto found no CLIP: model {model_ref} has no clip/ folder; set "
            "eval.clip=open_clip:MODEL:TAG (or a local weights file, e.g. open_clip:ViT-L-14:/path/model.safetensors)"
        )
    training = [r.path for r in records]
    captions = rendered_captions(cfg, records)
    prior = run_prior_prompts(cfg, captions)
    evaluator = Evaluator(
        e,
        base_model=model_ref,
        clip_spec=spec,
        reference_paths=reference_paths(e, cfg) or training,
        training_paths=training,
        subject_prompts=subject_prompts(e, captions),
        size=resolution,
        prior=prior,
        device=device,
        generations_root=generations_root,
    )
    return evaluator, None


def run_prior_prompts(cfg, captions: list[str]):
    """The forgetting probe's prompts for a run (derived when eval.prior_prompts is null)."""
    from sdexp.evaluation.prior_prompts import prior_prompts_for
    from sdexp.models.loading import model_family, resolve_model

    path = resolve_model(cfg.model.path or cfg.model.name, allow_pickle=cfg.model.allow_pickle)
    family = model_family(path, cfg.model.family)
    return prior_prompts_for(
        cfg.eval,
        captions,
        data_token=cfg.data.token,
        model_dir=path if path.is_dir() else None,
        family=family,
    )


def build_scoring(cfg, module, run_dir: Path, device, notify=print):
    """The ``CheckpointScoring`` callback for a run, or None (with a notice saying why); the
    run's inputs have passed ``sdexp.run.preflight``."""
    from sdexp.callbacks.scoring import CheckpointScoring
    from sdexp.evaluation.config import objective_metric_names

    evaluator, off = build_evaluator(cfg, module.train_dataset.records, module.resolution, device)
    es = cfg.train.early_stopping
    if evaluator is None:
        if es.patience and not es.monitor.startswith("val/"):
            raise ConfigError(
                f"train.early_stopping.monitor: {es.monitor} needs evaluation, which is off ({off})"
            )
        notify(f"evaluation off: {off}")
        needs_eval = sorted(m for m in objective_metric_names(cfg.eval) if not m.startswith("val/"))
        if needs_eval:
            notify(f"no best/ checkpoint: the objectives need {', '.join(needs_eval)}")
            return None
    if evaluator is not None:
        notify(evaluator.prior.describe())
    return CheckpointScoring(
        cfg.eval.objectives,
        run_dir,
        logger=None,
        evaluator=evaluator,
        at_start=cfg.eval.at_start,
        notify=notify,
    )
