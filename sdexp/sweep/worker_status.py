"""Each sweep worker says what it is doing in ``SWEEP/workers/<worker-id>.json``.

The file is the only channel between a worker and whoever watches the sweep (`sdexp sweep
--workers`, `sdexp sweep --status`): the worker writes it atomically, readers never block it.

    {"worker": "w0", "pid": 4242, "host": "node3", "gpus": [0, 1] | null,
     "state": "running" | "idle" | "done", "trial": 7 | null, "step": 120, "max_steps": 800,
     "trial_started": <unix time> | null, "updated_at": <unix time>, "exit_code": 0 (done only)}

A worker started by a pool or a Slurm job learns its id from ``SDEXP_WORKER_ID``; one started by
hand is ``<host>-<pid>``. Its GPUs are those ``CUDA_VISIBLE_DEVICES`` names.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
from pathlib import Path

from sdexp.atomic import write_json_atomic
from sdexp.callbacks.base import Callback

WORKERS_DIR = "workers"
WORKER_ID_ENV = "SDEXP_WORKER_ID"
WRITE_EVERY_SECONDS = 1.0  # step updates are throttled to about one write a second


def workers_dir(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / WORKERS_DIR


def status_path(sweep_dir: str | Path, worker_id: str) -> Path:
    return workers_dir(sweep_dir) / f"{worker_id}.json"


def this_worker_id() -> str:
    return os.environ.get(WORKER_ID_ENV) or f"{socket.gethostname()}-{os.getpid()}"


def visible_gpus() -> list[int] | None:
    """The GPU ids ``CUDA_VISIBLE_DEVICES`` gives this process; None when it is unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [int(x) for x in value.split(",") if x.strip().lstrip("-").isdigit()]


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def write_status(sweep_dir: str | Path, worker_id: str, **fields) -> dict:
    """Write (atomically) the worker's whole status: identity, then ``fields``, then updated_at."""
    record = {
        "worker": worker_id,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "gpus": visible_gpus(),
        "state": "idle",
        "trial": None,
        "step": None,
        "max_steps": None,
        "trial_started": None,
        **fields,
        "updated_at": time.time(),
    }
    write_json_atomic(status_path(sweep_dir, worker_id), record)
    return record


def read_statuses(sweep_dir: str | Path) -> list[dict]:
    """Every worker's last status, by worker id; a file being replaced or torn is skipped."""
    records = []
    for path in sorted(workers_dir(sweep_dir).glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and "worker" in record:
            records.append(record)
    return records


def mark_done(sweep_dir: str | Path, worker_id: str, exit_code: int | None) -> dict:
    """The worker's file, kept as it was, with state "done" and how its process ended (written by
    whoever saw it end: the worker itself, a pool's parent, a job function)."""
    path = status_path(sweep_dir, worker_id)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    record.pop("updated_at", None)
    record.update(worker=worker_id, state="done")
    if exit_code is not None or "exit_code" not in record:  # an exit code seen is not forgotten
        record["exit_code"] = exit_code
    return write_status(sweep_dir, worker_id, **record)


_DONE_REGISTERED: set[tuple[str, str]] = set()


def _mark_done_at_exit(sweep_dir: Path, worker_id: str) -> None:
    """Once per process: the worker's file says "done" when the process exits (normally, on
    Ctrl-C or on an error; a SIGKILL leaves it as it was, and a pool's parent marks it)."""
    key = (str(sweep_dir), worker_id)
    if key in _DONE_REGISTERED:
        return
    _DONE_REGISTERED.add(key)

    def done() -> None:
        if not status_path(sweep_dir, worker_id).is_file():  # the sweep folder was removed meanwhile
            return
        try:
            mark_done(sweep_dir, worker_id, None)
        except OSError:
            pass

    atexit.register(done)


class WorkerStatus(Callback):
    """The running trial's progress in the worker's status file: "running" with the trial number
    from construction (the runner makes one per trial), the step at most once a second, "idle"
    when training ends."""

    def __init__(self, sweep_dir: str | Path, trial: int, worker_id: str | None = None):
        self.sweep_dir = Path(sweep_dir)
        self.worker_id = worker_id or this_worker_id()
        self.trial = trial
        self.started = time.time()
        self.max_steps: int | None = None
        self._last_write = 0.0
        _mark_done_at_exit(self.sweep_dir, self.worker_id)
        self._write("running", step=0)

    def _write(self, state: str, step: int | None) -> None:
        self._last_write = time.monotonic()
        write_status(
            self.sweep_dir,
            self.worker_id,
            state=state,
            trial=self.trial,
            step=step,
            max_steps=self.max_steps,
            trial_started=self.started,
        )

    def on_train_start(self, trainer, module) -> None:
        if not trainer.is_main_process:
            return
        self.max_steps = trainer.max_steps
        self._write("running", trainer.state.step)

    def on_train_step_end(self, trainer, module, logs: dict) -> None:
        if trainer.is_main_process and time.monotonic() - self._last_write >= WRITE_EVERY_SECONDS:
            self._write("running", trainer.state.step)

    def on_train_end(self, trainer, module) -> None:
        if trainer.is_main_process:
            self._write("idle", trainer.state.step)
