"""A sweep trial trained by several processes (``sdexp sweep --gpus-per-trial G``).

The worker composes the trial's config as for any trial, writes it into the trial's folder and
starts ``torchrun --standalone --nproc_per_node G -m sdexp.sweep.ddp_trial``, then waits and reads
the folder's run.json and best.json to tell the study, as after an in-process trial. In the child,
every process trains the run (DDP, ``sdexp.distributed``); rank 0 reopens the study, reports each
scored checkpoint through ``optuna.trial.Trial(study, trial_id)`` and asks ``should_prune``; the
trainer broadcasts its stop to the other processes. A pruned child records ``pruned_step`` on
the trial, which the worker reads back.

A child, not the worker itself: a process group lives as long as its processes, and the worker
outlives every trial (and lends its loaded base to the next, which a child cannot).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from sdexp.errors import ConfigError, UserError


def check_gpus_per_trial(gpus: int, resume_trials: bool) -> int:
    """``--gpus-per-trial``, checked: a positive count, and not with ``--resume-trials`` (a
    resumed trial goes on in the worker's own process, with one)."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ConfigError(f"--gpus-per-trial: must be a positive number of processes (got {gpus!r})")
    if gpus > 1 and resume_trials:
        raise ConfigError(
            "--gpus-per-trial: a trial on several processes cannot be resumed mid-run; drop --resume-trials"
        )
    return gpus


def child_command(runner, trial, config: Path, run_dir: Path, pruning) -> list[str]:
    """The torchrun command line that trains ``trial`` on ``runner.gpus_per_trial`` processes."""
    info = runner.info
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(runner.gpus_per_trial),
        "-m", "sdexp.sweep.ddp_trial",
        "--config", str(config), "--run-dir", str(run_dir),
        "--storage", str(info.storage), "--study", info.study_name, "--trial-id", str(trial._trial_id),
    ]  # fmt: skip
    if pruning is not None:
        cmd += ["--objective", pruning.objective, "--direction", pruning.direction]
        cmd += ["--pruner", json.dumps(dict(runner.definition.pruner))]
    return cmd


def train_in_processes(runner, trial, cfg, run_dir: Path, pruning):
    """Train ``trial`` (its composed ``cfg``) in a torchrun child; returns the ``RunResult`` its
    folder records. ``pruning`` (the worker's ``TrialPruning``, or None) gets the child's pruned step."""
    from sdexp.run import RunResult, save_config

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = save_config(cfg, run_dir)  # the child's input; train_run rewrites it unchanged
    # The child's own W&B service: a worker that used W&B exports its service to its children.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    cmd = child_command(runner, trial, config, run_dir, pruning)
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, check=False)
    run_json = run_dir / "run.json"
    run = json.loads(run_json.read_text()) if run_json.is_file() else {}
    if proc.returncode != 0 or run.get("status") != "finished":
        raise RuntimeError(
            run.get("error")
            or f"the trial's {runner.gpus_per_trial} processes exited with code {proc.returncode}; "
            f"see {run_dir / 'run.log'}"
        )
    pruned = runner.storage.get_trial(trial._trial_id).user_attrs.get("pruned_step")
    if pruning is not None and pruned is not None:
        pruning.pruned_step = int(pruned)
    best_json = run_dir / "best.json"
    best = json.loads(best_json.read_text()) if best_json.is_file() else None
    final = run.get("final", {})
    return RunResult(
        run_dir,
        run["steps"],
        run["stop_reason"],
        run_dir / "checkpoints" / "final",
        final.get("train", {}),
        final.get("val", {}),
        run.get("wall_seconds", 0.0),
        best,
    )


def _open_trial(args):
    """The running trial, reopened in this process with the sweep's pruner."""
    from types import SimpleNamespace

    import optuna

    from sdexp.quiet import quiet_optuna
    from sdexp.sweep.layout import open_storage
    from sdexp.sweep.runner import make_pruner

    quiet_optuna()
    pruner = make_pruner(SimpleNamespace(pruner=json.loads(args.pruner)), multi=False)
    study = optuna.load_study(study_name=args.study, storage=open_storage(args.storage), pruner=pruner)
    return optuna.trial.Trial(study, args.trial_id)


def main(argv: list[str] | None = None) -> int:
    """One process of the torchrun child (each process runs this)."""
    from omegaconf import OmegaConf

    from sdexp import distributed
    from sdexp.config import to_run_config
    from sdexp.errors import report_and_exit
    from sdexp.run import train_run
    from sdexp.sweep.runner import TrialPruning
    from sdexp.trainer import wants_cpu

    parser = argparse.ArgumentParser(
        prog="python -m sdexp.sweep.ddp_trial", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", type=Path, required=True, help="the trial's composed config.yaml")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--trial-id", type=int, required=True)
    parser.add_argument("--objective", default=None, help="the objective pruning watches (none: no pruning)")
    parser.add_argument("--direction", default="maximize")
    parser.add_argument("--pruner", default='{"name": "none"}', help="the sweep's pruner, as JSON")
    args = parser.parse_args(argv)
    try:
        cfg = to_run_config(OmegaConf.load(args.config))
        distributed.start_process_group(cpu=wants_cpu(cfg.train.device))
        trial = pruning = None
        if distributed.is_main() and args.objective:
            trial = _open_trial(args)
            pruning = TrialPruning(trial, args.objective, args.direction)
        train_run(cfg, args.run_dir, callbacks=[pruning] if pruning else [])
        if pruning is not None and pruning.pruned_step is not None:
            trial.set_user_attr("pruned_step", pruning.pruned_step)
    except UserError as err:
        report_and_exit(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
