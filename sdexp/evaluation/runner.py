"""Score a list of targets (LoRA checkpoints on a base, or whole model folders) with a run config's
evaluation: what `sdexp eval` runs. The base is loaded once; each LoRA is loaded into it, scored
and unloaded, so scoring a run's checkpoints costs one model load.
"""

from __future__ import annotations

from pathlib import Path

from sdexp.errors import ConfigError


def evaluate_targets(
    cfg, targets, *, device: str = "auto", with_base: bool = True, out: Path | None = None, notify=print,
    embeddings=(),
):  # fmt: skip
    """One row per target (the base first): name, step, metrics, objectives; written to ``out``.
    ``embeddings`` (read by ``generate.check_embeddings``) are loaded for every row; a target's own
    embedding (a textual-inversion checkpoint) only for its row."""
    from sdexp.atomic import write_json_atomic
    from sdexp.base_generations import sampling_pipeline
    from sdexp.config import as_plain_dict
    from sdexp.data.scan import scan_folder
    from sdexp.evaluation.objective import score_all
    from sdexp.evaluation.setup import build_evaluator, run_resolution
    from sdexp.export.embedding_files import read_embedding
    from sdexp.generate import check_loras, load_loras
    from sdexp.models.loading import model_family, resolve_model
    from sdexp.models.token_embeddings import embeddings_attached
    from sdexp.quiet import quiet_libraries
    from sdexp.rng import isolated_rng
    from sdexp.trainer import resolve_device

    quiet_libraries()
    d = cfg.data
    if not d.dir:
        raise ConfigError(
            "data.dir: the subject's images are the reference for CLIP-I, DINO and FID; pass data.dir=DIR"
        )
    records = scan_folder(
        d.dir, default_prompt=d.prompt, caption_extension=d.caption_extension, skip_bad=d.skip_bad
    )
    dev = resolve_device(device, "--device")
    evaluator, off = build_evaluator(cfg, records, run_resolution(cfg), dev)
    if evaluator is None:
        raise ConfigError(f"eval: nothing to score with ({off})")
    objectives = cfg.eval.objectives
    needs_validation = sorted(
        {t.metric for o in objectives for t in [*o.terms, *o.constraints]}
        & {"val/loss", "val/gap", "val/train_loss"}
    )
    if needs_validation:
        notify(
            f"objectives skipped: {', '.join(needs_validation)} come from training's validation, not from `sdexp eval`"
        )
    base_ref = cfg.model.path or cfg.model.name
    family = model_family(resolve_model(base_ref, allow_pickle=cfg.model.allow_pickle), cfg.model.family)
    base_pipe, _ = sampling_pipeline(base_ref, sampler=cfg.eval.sampler, device=dev)
    rows = []

    def score(pipe, name: str, step: int | None) -> None:
        with isolated_rng(dev):
            result = evaluator.evaluate(pipe)
        scores = [] if needs_validation else score_all(objectives, result.metrics)
        metrics = {**result.metrics, **{k: v for s in scores for k, v in s.as_metrics().items()}}
        rows.append(
            {
                "name": name,
                "step": step,
                "metrics": metrics,
                "objectives": {s.name: s.value for s in scores},
                "feasible": all(s.feasible for s in scores),
                "seconds": round(result.seconds, 3),
                "warnings": result.warnings,
                "_score": scores[0] if scores else None,
            }
        )
        notify(f"scored {name} in {result.seconds:.1f}s")

    given = [(e.token, e.vectors(family)) for e in embeddings]
    if with_base:
        with embeddings_attached(base_pipe, family, given):
            score(base_pipe, "base", 0)
    for target in targets:
        if target.model is not None:
            pipe, _ = sampling_pipeline(target.model, sampler=cfg.eval.sampler, device=dev)
            with embeddings_attached(pipe, family, given):
                score(pipe, target.name, target.step)
            continue
        own = []
        if target.embedding is not None:
            emb = read_embedding(target.embedding)
            own = [(emb.token, emb.vectors(family))]
        if target.lora is not None:
            load_loras(base_pipe, check_loras([(target.lora, 1.0)]), family)
        try:
            with embeddings_attached(base_pipe, family, given + own):
                score(base_pipe, target.name, target.step)
        finally:
            if target.lora is not None:
                base_pipe.unload_lora_weights()
    candidates = [r for r in rows if r["name"] != "base" and r["_score"] is not None]
    best = None
    for r in candidates:
        if best is None or r["_score"].better_than(best["_score"]):
            best = r
    for r in rows:
        r.pop("_score")
    if out is not None:
        write_json_atomic(
            Path(out),
            {
                "model": base_ref,
                "data": str(d.dir),
                "eval": as_plain_dict(cfg)["eval"],
                "best": best["name"] if best else None,
                "rows": rows,
            },
        )
    return rows
