"""The sweep's own W&B run: the best trial (or Pareto set) and the counts, in the study's group,
next to one W&B run per trial. Only when the trials log to W&B."""

from __future__ import annotations


def log_sweep_summary(runner) -> None:
    from sdexp.sweep.best import best_rows

    lg = runner.base.logger
    if lg.name != "wandb":
        return
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
    logger.finish(exit_code=0)
