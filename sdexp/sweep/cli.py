"""`sdexp sweep` and `sdexp best`.

sdexp sweep sweeps/demo.yaml [overrides...] [--out DIR] [--storage URL] [--n-trials N] [--resume-trials]
sdexp sweep --storage URL --study NAME [overrides...] [--out DIR]   (join a study from another machine)
sdexp sweep sweeps/demo.yaml ... --workers N | --gpus all | --launcher slurm --workers N   (docs/cluster.md)
sdexp sweep --status sweeps-out/demo
sdexp best sweeps-out/demo [--export DIR]

A sweep whose trials all failed alike ends with that error in one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from sdexp.cli import arg, subcommand
from sdexp.errors import ConfigError, UserError


@subcommand(
    "sweep",
    help="run (or resume) an Optuna sweep over run configs: one run folder per trial, best checkpoint at the end",
    args=[
        arg(
            "definition",
            metavar="SWEEP_YAML",
            type=Path,
            nargs="?",
            help="a sweep definition, e.g. sweeps/demo.yaml (leave out with --study)",
        ),
        arg(
            "overrides",
            nargs="*",
            help="run-config overrides for every trial, e.g. model.path=... data.dir=...",
        ),
        arg(
            "--out",
            type=Path,
            default=None,
            help="sweep folder (default sweeps-out/<name>); the same folder resumes",
        ),
        arg(
            "--storage",
            default=None,
            help="Optuna storage: sqlite:///…, postgresql://…, or journal:PATH "
            "(default: SQLite in the sweep folder)",
        ),  # fmt: skip
        arg(
            "--study",
            default=None,
            help="join this study in --storage without its SWEEP_YAML (another machine's sweep: the "
            "definition is stored in the study); overrides given replace the stored ones",
        ),
        arg("--n-trials", type=int, default=None, help="override the definition's n_trials"),
        arg("--timeout-minutes", type=float, default=None, help="stop starting trials after this long"),
        arg("--no-report", action="store_true", help="do not write the HTML report at the end"),
        arg(
            "--no-reuse-base",
            action="store_true",
            help="load the base model afresh for every trial instead of lending one loaded base to "
            "trial after trial (restored and checked in between); for debugging",
        ),
        arg(
            "--gpus-per-trial",
            type=int,
            default=1,
            help="train each trial on this many processes (DDP, one per GPU): a torchrun child per trial",
        ),
        arg(
            "--resume-trials",
            action="store_true",
            help="trials save their training state at each checkpoint, and a trial whose worker was "
            "killed (or Ctrl-C'd) is retried from its last checkpoint instead of from step 0",
        ),
        arg(
            "--workers",
            type=int,
            default=None,
            help="start N worker processes on this one study and show one live view (their output: "
            "SWEEP/workers/<id>.log); with --launcher, N jobs",
        ),
        arg(
            "--gpus",
            default=None,
            metavar="all|0,1,3",
            help="one worker per GPU (CUDA_VISIBLE_DEVICES set for each): all visible GPUs or these indices",
        ),
        arg(
            "--trials-per-gpu",
            type=int,
            default=None,
            metavar="K",
            help="with --gpus: K workers share each GPU",
        ),
        arg(
            "--launcher",
            choices=["slurm", "local"],
            default=None,
            help="submit the --workers as submitit jobs (slurm: sbatch; local: processes here) and return",
        ),
        arg("--wait", action="store_true", help="with --launcher: wait for the jobs, showing the view"),
        arg(
            "--status",
            type=Path,
            default=None,
            metavar="SWEEP_DIR",
            help="print a sweep's progress, workers and jobs once, and exit",
        ),
        arg(
            "--slurm.partition",
            dest="slurm_partition",
            default=None,
            help="with --launcher slurm: the partition",
        ),
        arg(
            "--slurm.account",
            dest="slurm_account",
            default=None,
            help="with --launcher slurm: the account to charge",
        ),
        arg(
            "--slurm.gpus_per_task",
            dest="slurm_gpus_per_task",
            type=int,
            default=None,
            help="GPUs per worker job",
        ),
        arg(
            "--slurm.time",
            dest="slurm_time",
            type=int,
            default=None,
            metavar="MIN",
            help="each job's time limit in minutes (default 60)",
        ),
        arg(
            "--slurm.cpus_per_task",
            dest="slurm_cpus_per_task",
            type=int,
            default=None,
            help="CPUs per worker job",
        ),
        arg(
            "--slurm.mem_gb", dest="slurm_mem_gb", type=float, default=None, help="memory per worker job (GB)"
        ),
    ],
)
def cmd_sweep(args: argparse.Namespace) -> int:
    from sdexp.sweep.worker_pool import launch, launch_plan, pool_child

    if args.status is not None:  # the view once (sweep/status_view.py)
        from sdexp.sweep.status_view import print_status

        print_status(args.status)
        return 0
    slots = launch_plan(args)  # --workers/--gpus/--launcher, checked before anything loads
    from sdexp.quiet import quiet_libraries
    from sdexp.sweep.runner import SweepRunner
    from sdexp.sweep.summary import log_sweep_summary

    quiet_libraries()
    definition, overrides = _definition_and_overrides(args)
    if args.n_trials is not None:
        if args.n_trials < 1:
            raise ConfigError("--n-trials: must be >= 1")
        if definition.sampler_name == "grid" and args.n_trials != definition.n_trials:
            raise ConfigError(f"--n-trials: the grid has {definition.n_trials} points")
        definition.n_trials = args.n_trials
    out = (args.out or Path("sweeps-out") / definition.name).expanduser()
    runner = SweepRunner(
        definition,
        out,
        extra_overrides=overrides,
        storage=args.storage,
        resume_trials=args.resume_trials,
        reuse_base=not args.no_reuse_base,
        gpus_per_trial=args.gpus_per_trial,
        n_trials_requested=args.n_trials,
    )
    info, study = runner.prepare()
    print(f"sweep folder: {runner.sweep_dir}\nstudy: {info.study_name} in {info.storage}")
    if slots is not None:  # the workers run the trials, as processes or jobs (sweep/worker_pool.py)
        return launch(args, runner, slots, print_best)
    try:
        outcome = runner.run(timeout_minutes=args.timeout_minutes)
    except KeyboardInterrupt:
        print(
            "\nstopped; the running trial will be rerun: run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    print(f"trials: {outcome.completed} complete, {outcome.pruned} pruned, {outcome.failed} failed")
    if not outcome.failed_out:
        print_best(runner.sweep_dir)
    if not args.no_report:
        from analysis.report import report

        report(runner.sweep_dir)
    if not pool_child():  # a --workers pool's parent logs the summary once, at the end
        log_sweep_summary(runner)
    if outcome.failed_out:  # nothing to show for it but the error every trial made: say it in one line
        raise UserError(outcome.stopped)
    return 0


def _definition_and_overrides(args: argparse.Namespace):
    """The definition to run and the command line's overrides: from SWEEP_YAML, or, with --study,
    from the study in --storage (the command line's overrides replacing stored ones, key by key)."""
    from sdexp.sweep import stored_definition
    from sdexp.sweep.definition import load_definition

    overrides = list(args.overrides)
    if args.study is None:
        if args.definition is None:
            raise UserError(
                "give a SWEEP_YAML (e.g. sweeps/demo.yaml), or --storage URL --study NAME "
                "to join a study another machine started"
            )
        return load_definition(args.definition), overrides
    if args.definition is not None:
        if "=" not in str(args.definition):  # with --study, the first positional is an override
            raise UserError(
                f"--study: joins a stored study without its definition; drop {args.definition} or --study"
            )
        overrides.insert(0, str(args.definition))
    if not args.storage:
        raise UserError(
            f"--study {args.study}: also give --storage URL, the storage the study lives in "
            "(e.g. postgresql://user@host/db)"
        )
    definition, _ = stored_definition.load(args.storage, args.study)
    return stored_definition.with_overrides(definition, overrides), []


MAX_FAILED_SHOWN = 10


def print_best(sweep_dir: Path) -> list[dict]:
    """The best trial (or Pareto set), then each failed trial's error and where its run.log is."""
    from sdexp.sweep.best import best_rows, failed_rows

    info, rows = best_rows(sweep_dir)
    if not rows:
        print("no trial has completed yet")
    else:
        title = "best trial" if len(info.objectives) == 1 else f"Pareto set ({len(rows)} trials)"
        directions = zip(info.objectives, info.directions, strict=True)
        print(f"{title} by {', '.join(f'{o} ({d})' for o, d in directions)}:")
    for r in rows:
        params = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items()
        )
        values = ", ".join(f"{k} {v:.4g}" for k, v in r["objectives"].items())
        flag = "" if r["feasible"] else " (no trial met the constraints; this one is closest)"
        print(
            f"  trial {r['trial']}: {values}{flag}\n    {params}\n    best checkpoint: {r['checkpoint']} (step {r['step']}) -> {r['best_dir']}"
        )
    failed = failed_rows(sweep_dir)
    if failed:
        print(f"failed trials ({len(failed)}):")
    for f in failed[:MAX_FAILED_SHOWN]:
        print(
            f"  trial {f['trial']}: {f['error'] or 'no error recorded (its worker was lost)'}\n    log: {f['log']}"
        )
    if len(failed) > MAX_FAILED_SHOWN:
        print(f"  … and {len(failed) - MAX_FAILED_SHOWN} more (the report lists them all)")
    return rows


@subcommand(
    "best",
    help="name a sweep's best trial and checkpoint (or its Pareto set); --export copies it out",
    args=[
        arg("sweep_dir", metavar="SWEEP_DIR", type=Path),
        arg(
            "--export",
            type=Path,
            default=None,
            help="copy the best checkpoint (LoRA files, config, scores) here",
        ),
        arg("--json", action="store_true", help="print JSON"),
    ],
)
def cmd_best(args: argparse.Namespace) -> int:
    from sdexp.sweep.best import best_rows

    if args.json:
        _, rows = best_rows(args.sweep_dir)
        print(json.dumps(rows, indent=2, default=str))
    else:
        rows = print_best(args.sweep_dir)
    if args.export is not None:
        if not rows:
            raise UserError(f"{args.sweep_dir}: no completed trial to export")
        export(rows[0], args.export)
        print(f"exported trial {rows[0]['trial']}'s {rows[0]['checkpoint']} to {args.export}")
    return 0


def export(row: dict, dest: Path) -> None:
    """The trial's best/ checkpoint plus its config, best.json and the trial's parameters."""
    from sdexp.atomic import write_json_atomic

    dest = dest.expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"--export: {dest} exists and is not empty; choose a new folder")
    best_dir = Path(row["best_dir"])
    if not best_dir.is_dir():
        raise UserError(f"{best_dir} is missing; the trial's run folder was moved or deleted")
    staging = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(best_dir, staging)
    run_dir = Path(row["run_dir"])
    for name in ("config.yaml", "best.json"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, staging / name)
    write_json_atomic(staging / "trial.json", {k: v for k, v in row.items() if k != "metrics"})
    if dest.exists():
        dest.rmdir()
    staging.rename(dest)
