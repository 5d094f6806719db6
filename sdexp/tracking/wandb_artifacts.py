"""A run's best checkpoint as a W&B model artifact: what ``wandb artifact get`` fetches later.

The artifact holds the files a UI or diffusers loads from ``best/`` (the LoRA, the embedding, their
metadata: its top-level files) and ``best.json`` (which checkpoint, its scores). A full fine-tune
keeps a whole pipeline folder in ``best/``, which goes in as it is. Weights are added by reference
to their files (``immutable``): a checkpoint is never rewritten in place, and an offline run is not
doubled on disk before ``wandb sync``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sdexp.tracking.hparams import BEST_FILE, read_best

BEST_DIR = "best"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def artifact_name(label: str) -> str:
    """A W&B artifact name (letters, digits, - _ .) for ``label`` (a run or study name)."""
    return "model-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.") or "run")


def best_checkpoint_artifact(wandb: Any, run_dir: Path | str, name: str, metadata: dict | None = None):
    """The artifact of ``run_dir``'s best checkpoint, or None when the run has none (nothing scored)."""
    run_dir = Path(run_dir)
    best_dir = run_dir / BEST_DIR
    best = read_best(run_dir)
    if best is None or not best_dir.is_dir():
        return None
    files = sorted(p for p in best_dir.iterdir() if p.is_file())
    artifact = wandb.Artifact(
        name,
        type="model",
        description=f"best checkpoint ({best.get('checkpoint')}, step {best['step']}) of {run_dir}",
        metadata={
            "step": best["step"],
            "checkpoint": best.get("checkpoint"),
            "objectives": best.get("objectives"),
            "feasible": best.get("feasible"),
            **(metadata or {}),
        },
    )
    if any(p.suffix in WEIGHT_SUFFIXES for p in files):
        for path in files:
            artifact.add_file(str(path), name=path.name, policy="immutable")
    else:  # a diffusers pipeline folder (full fine-tune)
        artifact.add_dir(str(best_dir), policy="immutable")
    artifact.add_file(str(run_dir / BEST_FILE), name=BEST_FILE)
    return artifact


def log_best_checkpoint(run: Any, run_dir: Path | str, name: str, aliases: list[str], metadata=None) -> bool:
    """Log ``run_dir``'s best checkpoint to the W&B ``run`` under ``aliases``; False if there is none."""
    import wandb

    artifact = best_checkpoint_artifact(wandb, run_dir, name, metadata)
    if artifact is None:
        return False
    run.log_artifact(artifact, aliases=list(aliases))
    return True


def step_alias(run_dir: Path | str) -> str:
    """``step-NNNNNN`` of the run's best checkpoint."""
    best = read_best(run_dir) or {}
    return f"step-{int(best.get('step') or 0):06d}"
