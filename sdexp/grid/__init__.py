"""Labelled X/Y image grids with the same seed in every cell (``sdexp grid``).

A grid is two axes over one GenerationSpec (``spec.py``): each axis value edits the spec (a prompt,
a checkpoint, a trial's best LoRA, a LoRA scale, a seed ...), each cell is one image. The run and
sweep shortcuts below are default axes; the report calls them. Each returns grid.png's path, beside
it ``grid.json`` (labels, layout, per-cell A1111 parameters) and ``cells/rXX_cYY.png``.
"""

from __future__ import annotations

from pathlib import Path


def prompts_by_checkpoints(
    run_dir: str | Path,
    prompts: list[str] | None = None,
    out_dir: str | Path | None = None,
    *,
    checkpoints: list[str] | None = None,
    seed: int = 0,
    **settings,
) -> Path:
    """Rows: ``prompts`` (default: the run's eval/sample prompts); columns: the run's checkpoints
    (``None``/``["all"]``: every one in step order; names such as ``step-000050``, ``final``,
    ``best``, ``base``). ``settings``: steps, guidance, scheduler, negative, width, height, device,
    dtype, model (another base). Default ``out_dir``: RUN_DIR/grids/prompt-x-checkpoint."""
    from sdexp.grid.build import shortcut_grid

    return shortcut_grid(
        run_dir, prompts, out_dir, column_key="checkpoint", column_values=checkpoints, seed=seed, **settings
    )


def prompts_by_trials(
    sweep_dir: str | Path,
    prompts: list[str] | None = None,
    out_dir: str | Path | None = None,
    *,
    trials: list[str] | None = None,
    seed: int = 0,
    **settings,
) -> Path:
    """Rows: ``prompts`` (default: the best trial's eval/sample prompts); columns: each COMPLETE
    trial's ``best/`` (``None``/``["all"]``: every one by trial number; ``["best"]``, or numbers).
    Default ``out_dir``: SWEEP_DIR/grids/prompt-x-trial. ``settings`` as in prompts_by_checkpoints."""
    from sdexp.grid.build import shortcut_grid

    return shortcut_grid(
        sweep_dir, prompts, out_dir, column_key="trial", column_values=trials, seed=seed, **settings
    )


def prompts_by_scales(
    target: str | Path,
    scales: list[float],
    prompts: list[str] | None = None,
    out_dir: str | Path | None = None,
    *,
    seed: int = 0,
    **settings,
) -> Path:
    """Rows: ``prompts``; columns: the LoRA of ``target`` (a run folder's best/, a checkpoint folder or
    a LoRA file; a file needs ``model=``) at each scale. Scale 0 is the base model's image."""
    from sdexp.grid.build import shortcut_grid

    return shortcut_grid(
        target,
        prompts,
        out_dir,
        column_key="scale",
        column_values=[str(s) for s in scales],
        seed=seed,
        **settings,
    )


__all__ = ["prompts_by_checkpoints", "prompts_by_scales", "prompts_by_trials"]
