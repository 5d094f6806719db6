"""``sdexp sweep --resume-trials``: a retried trial goes on from its last attempt's newest
resumable checkpoint instead of from step 0.

A trial is retried as a new Optuna trial with the same parameters when its worker died (its
heartbeats stopped: RetryHeartbeatStaleTrialCallback queues it, ``retry_history`` in its system
attributes) or was stopped by Ctrl-C (queued again by the runner, ``retry_of`` in its user
attributes). With the flag every trial saves its training state at each checkpoint
(``train.save_state=true``), and a retry:

- starts its folder ``trials/NNNN`` as a copy of the last attempt's (checkpoints hard-linked, the
  files a run appends to copied), rewound to that checkpoint like ``run.py --resume``;
- reports the last attempt's intermediate values up to that step again, so the pruner judges it
  on its whole history, as if it had never stopped;
- records ``resumed_from`` = {trial, checkpoint, step} in its user attributes.
An attempt without a complete state (killed before its first checkpoint) is retried from step 0.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sdexp.atomic import link_or_copy
from sdexp.errors import UserError
from sdexp.resume import checkpoint_step, find_resume_checkpoint
from sdexp.sweep.layout import trial_dir

_SHARED = ("checkpoints", "best", ".frozen-components")  # never rewritten in place: hard links


def previous_attempt(study, trial):
    """The FrozenTrial this trial retries (the newest attempt), or None for a first attempt."""
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    history = frozen[trial.number].system_attrs.get("retry_history") or []
    number = history[-1] if history else trial.user_attrs.get("retry_of")
    return frozen.get(number) if number is not None else None


def _copy_run_folder(source: Path, dest: Path) -> None:
    def copy(src: str, dst: str) -> None:
        shared = Path(src).relative_to(source).parts[0] in _SHARED
        (link_or_copy if shared else shutil.copy2)(src, dst)

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest, copy_function=copy)


def prepare_resumed_trial(sweep_dir: Path, study, trial, notify=print) -> Path | None:
    """For a retried trial: its folder as a copy of the last attempt's and that attempt's reports
    up to the checkpoint; returns the checkpoint (in the new folder) to resume, or None."""
    previous = previous_attempt(study, trial)
    if previous is None:
        return None
    source = trial_dir(sweep_dir, previous.number)
    try:
        _, checkpoint = find_resume_checkpoint(source)
    except (UserError, OSError):
        notify(
            f"trial {trial.number}: trial {previous.number} left no resumable checkpoint; starting at step 0"
        )
        return None
    dest = trial_dir(sweep_dir, trial.number)
    _copy_run_folder(source, dest)
    step = checkpoint_step(checkpoint)
    current = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    reported = current.intermediate_values
    for at, value in sorted(previous.intermediate_values.items()):
        if at <= step and at not in reported:
            trial.report(value, at)
    trial.set_user_attr(
        "resumed_from", {"trial": previous.number, "checkpoint": checkpoint.name, "step": step}
    )
    notify(f"trial {trial.number}: resuming trial {previous.number} from {checkpoint.name}")
    return dest / "checkpoints" / checkpoint.name
