"""The sweep's own W&B run: the best trial (or Pareto set) and the counts, in the study's group,
next to one W&B run per trial, and the best trial's checkpoint as a model artifact (aliases
``best`` and ``trial-NNNN``; each Pareto trial's under its ``trial-NNNN``). Only when the trials
log to W&B."""

from __future__ import annotations


def log_sweep_summary(runner) -> None:
    from sdexp.sweep.best import best_rows

    lg = runner.base.logger
    if not lg.wandb:
        return
    from sdexp.tracking.wandb_artifacts import artifact_name, log_best_checkpoint
    from sdexp.tracking.wandb_logger import WandbLogger

    info, rows = best_rows(runner.sweep_dir)
    counts = {}
    for t in runner.study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    logger = WandbLogger(
        run_dir=runner.sweep_dir / "summary",
        project=lg.project,
        entity=lg.entity,
        group=info.study_name,
        name=f"{info.study_name}-summary",
        tags=["sweep", "summary", info.study_name],
        config={
            "sweep": info.name,
            "objectives": info.objectives,
            "directions": info.directions,
            "n_trials": info.n_trials,
        },  # fmt: skip
        mode=lg.mode,
        notify=lambda *_: None,
    )
    summary = {f"trials/{k}": v for k, v in counts.items()}
    for i, r in enumerate(rows):
        prefix = "best" if len(rows) == 1 else f"pareto/{i}"
        summary[f"{prefix}/trial"] = r["trial"]
        summary[f"{prefix}/checkpoint"] = r["checkpoint"]
        summary.update({f"{prefix}/objective/{k}": v for k, v in r["objectives"].items()})
        summary.update({f"{prefix}/param/{k}": v for k, v in r["params"].items()})
    logger.log_summary(summary)
    if lg.log_model and logger.run is not None:
        for r in rows:
            aliases = [f"trial-{r['trial']:04d}", *(["best"] if len(rows) == 1 else [])]
            metadata = {"trial": r["trial"], "params": r["params"], "study": info.study_name}
            log_best_checkpoint(
                logger.run, r["run_dir"], artifact_name(f"{info.study_name}-best"), aliases, metadata
            )
    logger.finish(exit_code=0)
