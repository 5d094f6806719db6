"""`sdexp sweep --launcher slurm|local --workers N`: N sweep workers as submitit jobs on one study.

Each job runs one worker in its own process (`run_worker`: `sdexp sweep` with the parent's
arguments), so the jobs share the study exactly as workers started by hand do. ``slurm`` submits
through sbatch; ``local`` is submitit's LocalExecutor, the same code path with the jobs as local
processes (how the tests cover it). The parent prepares the study, submits, records the jobs in
``SWEEP/workers/slurm.json`` and returns (``--wait``: watches until they end).

Jobs on other nodes must reach the study: PostgreSQL, or ``journal:`` / SQLite on a file system
every node mounts. The default (SQLite in a sweep folder chosen for you) is refused.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from sdexp.atomic import write_json_atomic
from sdexp.errors import UserError
from sdexp.sweep.worker_status import WORKER_ID_ENV, pid_alive, workers_dir

SLURM_FILE = "slurm.json"
SUBMITIT_DIR = "submitit"
LOCAL_TIMEOUT_MINUTES = 7 * 24 * 60  # the local executor kills its jobs after timeout_min (default 2)
WAIT_POLL_SECONDS = 1.0

# --slurm.KEY flag -> (AutoExecutor parameter, type). Generic parameters reach every executor.
SLURM_OPTIONS = {
    "partition": ("slurm_partition", str),
    "account": ("slurm_account", str),
    "gpus_per_task": ("slurm_gpus_per_task", int),
    "time": ("timeout_min", int),
    "cpus_per_task": ("cpus_per_task", int),
    "mem_gb": ("mem_gb", float),
}


def slurm_option_values(args) -> dict:
    """{key: value} of the ``--slurm.KEY`` flags given."""
    return {
        key: getattr(args, f"slurm_{key}")
        for key in SLURM_OPTIONS
        if getattr(args, f"slurm_{key}", None) is not None
    }


def check_storage(storage: str | None, out_given: bool, existing_storage: str | None, notify=print) -> None:
    """Jobs on other nodes need a study they can all reach: refuse the default folder SQLite; warn
    that an explicit SQLite or journal file must be on a shared file system."""
    url = storage or existing_storage
    shared = (
        "pass a storage every node reaches: --storage postgresql://USER@HOST/DB, or "
        "--storage journal:/shared/path/NAME.journal (or --out /shared/path/NAME to keep SQLite in a "
        "sweep folder on a shared file system)"
    )
    if url is None:
        if not out_given:
            raise UserError(
                "--launcher slurm: the default study storage is SQLite in sweeps-out/NAME, chosen for this "
                f"machine only, which jobs on other nodes may not reach or lock safely; {shared}"
            )
        notify(
            "warning: --launcher slurm with SQLite in the --out folder: that folder must be on a file "
            "system every node mounts, with working file locks (PostgreSQL is the safer storage)"
        )
    elif url.startswith("sqlite"):
        notify(f"warning: --launcher slurm with {url}: it must be on a file system every node mounts")
    elif url.startswith("journal:"):
        notify(
            f"note: --launcher slurm with {url}: the journal file must be on a file system every node mounts"
        )


def check_job_launch(args) -> None:
    """``--launcher slurm`` needs Slurm's commands here and a storage the nodes share
    (``check_storage``, with the storage a resumed sweep folder already records); a local launcher
    shares this machine's disk."""
    if args.launcher != "slurm":
        return
    missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
    if missing:
        raise UserError(
            f"--launcher slurm: {missing[0]} is not on PATH, so this is not a Slurm login node; submit from "
            "one, or run the workers here with --workers N (or --launcher local)"
        )
    existing = None  # a sweep folder being resumed records its storage (another one is refused later)
    out = args.out
    if args.storage is None and out is None and getattr(args, "study", None) is None and args.definition:
        from sdexp.sweep.definition import load_definition

        out = Path("sweeps-out") / load_definition(args.definition).name
    if args.storage is None and out is not None and (Path(out).expanduser() / "sweep.json").is_file():
        from sdexp.sweep.layout import read_sweep_info

        existing = read_sweep_info(Path(out).expanduser()).storage
    check_storage(args.storage, args.out is not None, existing)


def make_executor(cluster: str, folder: Path, options: dict, job_name: str):
    """submitit's executor for ``cluster`` ("slurm" or "local") with the ``--slurm.*`` options."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = {"name": job_name, "timeout_min": LOCAL_TIMEOUT_MINUTES if cluster == "local" else 60}
    for key, value in options.items():
        name, _ = SLURM_OPTIONS[key]
        params[name] = value
    if cluster == "local" and "slurm_gpus_per_task" in params:
        params["gpus_per_node"] = params["slurm_gpus_per_task"]  # else the local job sees no GPU
    executor.update_parameters(**params)
    return executor


def run_worker(argv: list[str], worker_id: str) -> int:
    """The job: one `sdexp sweep` worker (the parent's arguments) in this process."""
    from sdexp.cli import main
    from sdexp.sweep.worker_status import mark_done

    os.environ[WORKER_ID_ENV] = worker_id
    try:
        code = main(["sweep", *argv])
    except SystemExit as stop:  # a UserError: one line already printed
        code = stop.code if isinstance(stop.code, int) else 1
    sweep_dir = Path(argv[argv.index("--out") + 1])
    mark_done(sweep_dir, worker_id, code)
    if code:
        raise RuntimeError(f"sweep worker {worker_id} stopped with exit code {code} (see this job's log)")
    return code


def submit_workers(
    cluster: str, argv: list[str], sweep_dir: Path, worker_ids: list[str], options: dict, job_name: str
):
    """Submit one worker job per id; record them in SWEEP/workers/slurm.json; returns the jobs."""
    folder = workers_dir(sweep_dir) / SUBMITIT_DIR
    executor = make_executor(cluster, folder, options, job_name)
    jobs = [executor.submit(run_worker, argv, worker_id) for worker_id in worker_ids]
    write_json_atomic(
        workers_dir(sweep_dir) / SLURM_FILE,
        {
            "cluster": cluster,
            "folder": str(folder.resolve()),
            "submitted_at": time.time(),
            "jobs": [{"job_id": str(job.job_id), "worker": w} for w, job in zip(worker_ids, jobs)],
        },
    )
    return jobs


def launch_jobs(args, runner, slots, print_best) -> int:
    """Submit the workers; print the job ids and the --status command; with --wait, show the view
    until the jobs end and finish as a pool does."""
    from sdexp.sweep.runner import shown_path
    from sdexp.sweep.status_view import StatusDisplay
    from sdexp.sweep.worker_pool import child_argv, finish

    sweep_dir = runner.sweep_dir
    jobs = submit_workers(
        args.launcher,
        child_argv(args, sweep_dir),
        sweep_dir,
        [slot.worker_id for slot in slots],
        slurm_option_values(args),
        f"sdexp-{runner.info.study_name}",
    )
    print(f"submitted {len(jobs)} {args.launcher} worker jobs: {', '.join(str(j.job_id) for j in jobs)}")
    print(f"watch them: sdexp sweep --status {shown_path(sweep_dir)}", flush=True)
    if not args.wait:
        return 0
    try:
        with StatusDisplay(sweep_dir) as display:
            final = wait_for_jobs(sweep_dir, display)
    except KeyboardInterrupt:  # the jobs are the scheduler's: stop watching only
        print(
            f"\nstopped watching; the jobs go on (scancel {' '.join(str(j.job_id) for j in jobs)} stops them)",
            file=sys.stderr,
        )
        return 130
    failed = [job for job in final if job["state"] != "FINISHED"]
    if failed:
        folder = workers_dir(sweep_dir) / SUBMITIT_DIR
        logs = {job["job_id"]: shown_path(job_log(folder, job["job_id"])) for job in failed}
        raise UserError(
            "; ".join(
                f"job {job['job_id']} ({job['worker']}) {job['state'].lower()}: see {logs[job['job_id']]}"
                for job in failed
            )
        )
    finish(args, runner, print_best)
    return 0


def job_state(cluster: str, folder: str | Path, job_id: str) -> str:
    """FINISHED / FAILED once the job left its result; else Slurm's state (sacct), or for a local
    job (its id is its pid) RUNNING while the process lives, LOST after."""
    import submitit
    from submitit.core.utils import JobPaths, pickle_load

    result = JobPaths(folder, job_id=job_id, task_id=0).result_pickle
    if result.exists():
        try:
            outcome = pickle_load(result)[0]
        except Exception:  # being written
            return "RUNNING"
        return "FINISHED" if outcome == "success" else "FAILED"
    if cluster == "local":
        return "RUNNING" if job_id.isdigit() and pid_alive(int(job_id)) else "LOST"
    return str(submitit.SlurmJob(folder, job_id).state)


def read_jobs(sweep_dir: str | Path) -> dict | None:
    """SWEEP/workers/slurm.json with each job's state now; None when no jobs were submitted."""
    import json

    path = workers_dir(sweep_dir) / SLURM_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    for job in record["jobs"]:
        job["state"] = job_state(record["cluster"], record["folder"], job["job_id"])
    return record


def job_log(folder: str | Path, job_id: str) -> Path:
    from submitit.core.utils import JobPaths

    return JobPaths(folder, job_id=job_id, task_id=0).stderr


ENDED = ("FINISHED", "FAILED", "LOST", "COMPLETED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


def wait_for_jobs(sweep_dir: Path, display) -> list[dict]:
    """Show the view until every job has ended; returns the jobs' final records."""
    while True:
        record = read_jobs(sweep_dir)
        display.update()
        if all(job["state"].split()[0] in ENDED for job in record["jobs"]):
            display.update(force=True)
            return record["jobs"]
        time.sleep(WAIT_POLL_SECONDS)
