"""`sdexp sweep --workers N` and `--gpus all|0,1,3`: several workers on one machine, one view.

The parent prepares the study once (created, grid enqueued), then starts one plain `sdexp sweep`
child per slot with the same arguments (``--gpus``: ``CUDA_VISIBLE_DEVICES`` = the slot's GPUs),
so the children only join it and share it as workers started by hand do. Their output goes to
``SWEEP/workers/<id>.log``; the parent shows the sweep's status (status_view.py) until they end.
Ctrl-C in the parent is forwarded once to every child (each in its own session, so a terminal's
Ctrl-C reaches them only through the parent): each fails its running trial and enqueues its
parameters again; the parent waits for them, says what was re-queued and exits 130.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sdexp.errors import UserError
from sdexp.sweep.worker_status import WORKER_ID_ENV, mark_done, workers_dir, write_status

POOL_CHILD_ENV = "SDEXP_POOL_CHILD"  # set in a pool's children: the parent logs the sweep's summary
STOP_TIMEOUT_SECONDS = 120.0  # after Ctrl-C, how long children get to fail and re-queue their trials
POLL_SECONDS = 1.0

# Flags that say how to launch workers; every other `sdexp sweep` argument is passed to each worker.
LAUNCH_DESTS = frozenset({"workers", "gpus", "trials_per_gpu", "launcher", "wait", "status"})


def is_launch_dest(dest: str) -> bool:
    return dest in LAUNCH_DESTS or dest.startswith("slurm_")


@dataclass(frozen=True)
class Slot:
    """One worker: its id and the GPUs it sees (CUDA_VISIBLE_DEVICES ids; None: the CPU, env unchanged)."""

    worker_id: str
    gpus: tuple[str, ...] | None = None


def gpu_slots(
    spec: str,
    device_count: int,
    trials_per_gpu: int = 1,
    gpus_per_trial: int = 1,
    visible: list[str] | None = None,
) -> list[tuple[str, ...]]:
    """The GPU groups workers run on: ``spec`` "all" or "0,1,3" (indices as torch counts them),
    grouped ``gpus_per_trial`` at a time, each group ``trials_per_gpu`` times. ``visible``: the
    parent's CUDA_VISIBLE_DEVICES ids, so index i means the i-th GPU this process sees."""
    if device_count < 1:
        raise UserError(
            "--gpus: no CUDA GPU is visible here (torch.cuda.device_count() is 0); on a CPU start "
            "several workers with --workers N"
        )
    if spec.strip().lower() == "all":
        indices = list(range(device_count))
    else:
        tokens = [t.strip() for t in spec.split(",") if t.strip()]
        if not tokens or not all(t.isdigit() for t in tokens):
            raise UserError(f"--gpus: {spec!r} is not 'all' or a list of GPU indices such as 0,1,3")
        indices = [int(t) for t in tokens]
        if len(set(indices)) != len(indices):
            raise UserError(
                f"--gpus: {spec!r} names a GPU twice; give each once (--trials-per-gpu K shares one)"
            )
        missing = [i for i in indices if i >= device_count]
        if missing:
            raise UserError(
                f"--gpus: GPU {missing[0]} does not exist; this machine shows {device_count} "
                f"(0-{device_count - 1}); use --gpus all or indices in that range"
            )
    if len(indices) % gpus_per_trial:
        raise UserError(
            f"--gpus-per-trial {gpus_per_trial}: the {len(indices)} GPUs of --gpus {spec} do not split into "
            f"groups of {gpus_per_trial}; name a multiple of {gpus_per_trial} GPUs"
        )
    ids = [visible[i] if visible else str(i) for i in indices]
    groups = [tuple(ids[i : i + gpus_per_trial]) for i in range(0, len(ids), gpus_per_trial)]
    return [group for group in groups for _ in range(trials_per_gpu)]


def _visible_devices() -> list[str] | None:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [t.strip() for t in value.split(",") if t.strip()] if value else None


def worker_slots(args: argparse.Namespace) -> list[Slot]:
    """One Slot per worker the flags ask for (``--gpus`` needs CUDA; checked here)."""
    if args.gpus is None:
        return [Slot(f"w{i}") for i in range(args.workers or 1)]
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "--gpus: CUDA is not available on this machine; on a CPU start several workers with --workers N"
        )
    groups = gpu_slots(
        args.gpus,
        torch.cuda.device_count(),
        args.trials_per_gpu or 1,
        getattr(args, "gpus_per_trial", None) or 1,
        _visible_devices(),
    )
    return [Slot(f"w{i}", group) for i, group in enumerate(groups)]


def pool_child() -> bool:
    """Whether this process is a worker a `--workers`/`--gpus` pool started."""
    return os.environ.get(POOL_CHILD_ENV) == "1"


def launch_plan(args: argparse.Namespace) -> list[Slot] | None:
    """The workers ``--workers``/``--gpus``/``--launcher`` ask for, checked before anything is
    loaded; None when the sweep runs in this process as one worker."""
    check_launch_flags(args)
    if args.launcher:
        from sdexp.sweep.slurm_launcher import check_job_launch

        check_job_launch(args)
        return [Slot(f"{args.launcher}-{i}") for i in range(args.workers or 1)]
    if args.workers or args.gpus:
        return worker_slots(args)
    return None


def check_launch_flags(args: argparse.Namespace) -> None:
    """Flags that cannot work together fail here."""
    from sdexp.sweep.slurm_launcher import slurm_option_values

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers: must be >= 1, not {args.workers}")
    if args.trials_per_gpu is not None:
        if args.gpus is None:
            raise UserError("--trials-per-gpu: only with --gpus (K workers share each GPU)")
        if args.trials_per_gpu < 1:
            raise UserError(f"--trials-per-gpu: must be >= 1, not {args.trials_per_gpu}")
    if args.gpus is not None and args.workers is not None:
        raise UserError(
            "--workers with --gpus: --gpus starts one worker per GPU; drop --workers "
            "(--trials-per-gpu K runs K workers on each GPU)"
        )
    if args.gpus is not None and args.launcher:
        raise UserError(
            f"--gpus with --launcher {args.launcher}: the scheduler assigns GPUs to jobs; "
            "ask for them with --slurm.gpus_per_task G"
        )
    options = slurm_option_values(args)
    if options and args.launcher is None:
        raise UserError(f"--slurm.{next(iter(options))}: only with --launcher slurm (or local)")
    if args.wait and args.launcher is None:
        raise UserError("--wait: only with --launcher slurm|local (a local --workers pool always waits)")


def child_argv(args: argparse.Namespace, sweep_dir: Path) -> list[str]:
    """The `sdexp sweep` arguments of one worker: the parent's own, less the launch flags, with the
    prepared sweep folder as --out and no report (the parent writes it once at the end)."""
    from sdexp.cli import COMMANDS

    positional, options = [], []
    for names, spec in COMMANDS["sweep"].args:
        flag = names[0]
        dest = spec.get("dest") or (flag if not flag.startswith("-") else flag.lstrip("-").replace("-", "_"))
        if is_launch_dest(dest) or dest in ("out", "no_report"):
            continue
        value = getattr(args, dest, None)
        if value is None or value is False or value == [] or value == spec.get("default"):
            continue
        if not flag.startswith("-"):
            positional += [str(v) for v in value] if isinstance(value, list) else [str(value)]
        elif value is True:
            options.append(flag)
        elif isinstance(value, list):
            if spec.get("action") == "append":
                for v in value:
                    options += [flag, str(v)]
            elif value:
                options += [flag, *map(str, value)]
        else:
            options += [flag, str(value)]
    return [*positional, *options, "--out", str(sweep_dir), "--no-report"]


def start_worker(argv: list[str], slot: Slot, sweep_dir: Path) -> subprocess.Popen:
    """One `sdexp sweep` child in its own session, its output in SWEEP/workers/<id>.log."""
    env = {**os.environ, WORKER_ID_ENV: slot.worker_id, POOL_CHILD_ENV: "1"}
    if slot.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(slot.gpus)
    log = workers_dir(sweep_dir) / f"{slot.worker_id}.log"
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sdexp.cli", "sweep", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the children through the parent only
            # An inherited ignored SIGINT (a shell's background job) would make the worker deaf to it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    gpus = [int(g) if g.isdigit() else g for g in slot.gpus] if slot.gpus is not None else None
    write_status(sweep_dir, slot.worker_id, pid=proc.pid, gpus=gpus, state="idle")
    return proc


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def run_pool(args: argparse.Namespace, runner, slots: list[Slot], print_best) -> int:
    """Start the workers, show the view until they end; the sweep's result, or why a worker stopped."""
    from sdexp.sweep.runner import shown_path
    from sdexp.sweep.status_view import StatusDisplay

    sweep_dir = runner.sweep_dir
    workers_dir(sweep_dir).mkdir(parents=True, exist_ok=True)
    argv = child_argv(args, sweep_dir)
    procs: dict[str, subprocess.Popen] = {}
    try:
        for slot in slots:
            procs[slot.worker_id] = start_worker(argv, slot, sweep_dir)
        print(
            f"{len(procs)} workers: "
            + ", ".join(
                f"{s.worker_id} (pid {procs[s.worker_id].pid}"
                + (f", GPU {','.join(s.gpus)})" if s.gpus else ")")
                for s in slots
            )
            + f"; their output: {shown_path(workers_dir(sweep_dir))}/<worker>.log",
            flush=True,
        )
        with StatusDisplay(sweep_dir) as display:
            while any(p.poll() is None for p in procs.values()):
                display.update()
                time.sleep(POLL_SECONDS)
            display.update(force=True)
    except KeyboardInterrupt:
        return interrupt(procs, sweep_dir)
    codes = {worker_id: p.returncode for worker_id, p in procs.items()}
    for worker_id, code in codes.items():
        mark_done(sweep_dir, worker_id, code)
    failed = {w: c for w, c in codes.items() if c != 0}
    if failed:
        logs = {w: workers_dir(sweep_dir) / f"{w}.log" for w in failed}
        raise UserError(
            "; ".join(
                f"worker {w} exited with code {c}: {_last_line(logs[w])} (log: {shown_path(logs[w])})"
                for w, c in failed.items()
            )
        )
    finish(args, runner, print_best)
    return 0


def interrupt(procs: dict[str, subprocess.Popen], sweep_dir: Path) -> int:
    """Ctrl-C: forward SIGINT once to each child, wait (then SIGKILL), say what was re-queued; 130."""
    from optuna.trial import TrialState

    from sdexp.sweep.layout import load_study

    _, study = load_study(sweep_dir)
    before = {t.number for t in study.get_trials(deepcopy=False)}
    print("\nstopping the workers (their running trials are failed and queued again)…", file=sys.stderr)
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    try:
        for p in procs.values():
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except (subprocess.TimeoutExpired, KeyboardInterrupt):  # stuck, or a second Ctrl-C: all now
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        for p in procs.values():
            p.wait()
    for worker_id, p in procs.items():
        mark_done(sweep_dir, worker_id, p.returncode)
    _, study = load_study(sweep_dir)
    requeued = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if t.number not in before and "retry_of" in t.user_attrs
    ]
    if requeued:
        print(
            "re-queued: "
            + ", ".join(f"trial {t.user_attrs['retry_of']} as trial {t.number}" for t in requeued),
            file=sys.stderr,
        )
    print("stopped; run the same command again to resume", file=sys.stderr)
    return 130


def finish(args: argparse.Namespace, runner, print_best) -> None:
    """What a single worker's sweep prints at its end: counts, the best trial, the report."""
    from optuna.trial import TrialState

    from sdexp.sweep.layout import load_study
    from sdexp.sweep.summary import log_sweep_summary

    _, study = load_study(runner.sweep_dir)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    print(
        f"trials: {states.count(TrialState.COMPLETE)} complete, {states.count(TrialState.PRUNED)} pruned, "
        f"{states.count(TrialState.FAIL)} failed"
    )
    print_best(runner.sweep_dir)
    if not args.no_report:
        from analysis.report import report

        report(runner.sweep_dir)
    log_sweep_summary(runner)


def launch(args: argparse.Namespace, runner, slots: list[Slot], print_best) -> int:
    """After ``runner.prepare()``: the slots of ``launch_plan`` as a pool of local processes, or as
    submitit jobs (``--launcher``). ``print_best``: how the sweep names its best trial at the end."""
    if args.launcher:
        from sdexp.sweep.slurm_launcher import launch_jobs

        return launch_jobs(args, runner, slots, print_best)
    return run_pool(args, runner, slots, print_best)
