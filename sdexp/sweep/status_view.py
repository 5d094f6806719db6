"""What a sweep is doing now, from the study and the workers' status files: one dict, two views.

``sweep_status(SWEEP)`` reads only (the study through its storage, ``SWEEP/workers/*.json``,
``SWEEP/workers/slurm.json``), so any number of watchers can poll it while workers run.
``render_plain`` is one line (logs, CI, a pool's parent off a terminal); ``render_rich`` is the
live view's table (``sdexp sweep --workers N`` on a terminal, ``sdexp sweep --status SWEEP``).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from sdexp.sweep.worker_status import pid_alive, read_statuses


def _worker_view(record: dict, trial_states: dict[int, str], now: float) -> dict:
    """A status file as the view shows it: a "running" worker whose trial the study no longer
    runs is between trials ("idle"); one on this host whose process is gone is "lost"."""
    worker = dict(record)
    state = worker.get("state")
    if state == "running" and trial_states.get(worker.get("trial")) not in (None, "RUNNING"):
        worker["state"] = "idle"
    if (
        worker["state"] != "done"
        and worker.get("host") == socket.gethostname()
        and isinstance(worker.get("pid"), int)
        and not pid_alive(worker["pid"])
    ):
        worker["state"] = "lost"
    started = worker.get("trial_started")
    worker["trial_seconds"] = now - started if started and worker["state"] == "running" else None
    return worker


def sweep_status(sweep_dir: str | Path) -> dict:
    """Counts by trial state, the best trial so far, each worker, the Slurm jobs and an ETA.

    ETA = mean duration of the finished (complete or pruned) trials × trials still to finish /
    active workers (running or idle; at least one); None before any trial has finished."""
    from optuna.trial import TrialState

    from sdexp.sweep.best import best_trials
    from sdexp.sweep.layout import load_study

    sweep_dir = Path(sweep_dir)
    now = time.time()
    info, study = load_study(sweep_dir)
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): 0 for state in TrialState}
    for t in trials:
        counts[t.state.name.lower()] += 1
    n_trials = int(study.user_attrs.get("n_trials", info.n_trials))
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in finished
        if t.datetime_start and t.datetime_complete
    ]
    best = best_trials(info, study)
    trial_states = {t.number: t.state.name for t in trials}
    workers = [_worker_view(r, trial_states, now) for r in read_statuses(sweep_dir)]
    active = sum(w["state"] in ("running", "idle") for w in workers)
    remaining = max(0, n_trials - len(finished))
    mean = sum(durations) / len(durations) if durations else None
    status = {
        "sweep": info.name,
        "study": info.study_name,
        "storage": info.storage,
        "n_trials": n_trials,
        "finished": len(finished),
        "counts": counts,
        "best": (
            {
                "trial": best[0].number,
                "objective": info.objectives[0],
                "value": best[0].values[0],
                "pareto_size": len(best) if len(info.objectives) > 1 else None,
            }
            if best
            else None
        ),
        "workers": workers,
        "mean_trial_seconds": mean,
        "eta_seconds": (mean * remaining / max(1, active)) if mean is not None else None,
        "slurm": None,
    }
    from sdexp.sweep.slurm_launcher import read_jobs

    jobs = read_jobs(sweep_dir)
    if jobs is not None:
        status["slurm"] = jobs
    return status


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _best_text(status: dict) -> str:
    best = status["best"]
    if best is None:
        return "best: none yet"
    pareto = f" (Pareto set of {best['pareto_size']})" if best["pareto_size"] else ""
    return f"best {best['objective']} {best['value']:.4g} (trial {best['trial']}){pareto}"


def _worker_text(worker: dict) -> str:
    state = worker["state"]
    if state != "running":
        return f"{worker['worker']} {state}"
    if not worker.get("max_steps"):  # loading, preparing data, scoring the base: no step yet
        return f"{worker['worker']} trial {worker.get('trial')} setting up"
    return f"{worker['worker']} trial {worker.get('trial')} step {worker.get('step')}/{worker['max_steps']}"


def render_plain(status: dict) -> str:
    """One line: done/n, running, failed, pruned, the best so far, each worker, the ETA."""
    c = status["counts"]
    parts = [
        f"{status['sweep']}: {status['finished']}/{status['n_trials']} done",
        f"{c['running']} running",
        f"{c['fail']} failed",
        f"{c['pruned']} pruned",
        _best_text(status),
        *(_worker_text(w) for w in status["workers"]),
    ]
    if status["slurm"]:
        states = [job["state"] for job in status["slurm"]["jobs"]]
        parts.append("jobs " + ", ".join(f"{states.count(s)} {s.lower()}" for s in sorted(set(states))))
    parts.append(f"eta {format_seconds(status['eta_seconds'])}")
    return " · ".join(parts)


def render_rich(status: dict):
    """The live view: a summary line, a table of workers, and the Slurm jobs when there are any."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    c = status["counts"]
    header = Text.assemble(
        (f"sweep {status['sweep']}", "bold"),
        f"  {status['finished']}/{status['n_trials']} done · {c['complete']} complete · "
        f"{c['pruned']} pruned · {c['fail']} failed · {c['running']} running · {c['waiting']} waiting\n",
        f"{_best_text(status)} · eta {format_seconds(status['eta_seconds'])}"
        + (
            f" (mean trial {format_seconds(status['mean_trial_seconds'])})"
            if status["mean_trial_seconds"]
            else ""
        ),
    )
    workers = Table(title=None, expand=False)
    for column in ("worker", "state", "trial", "step", "trial time", "gpus", "host", "pid"):
        workers.add_column(column)
    for w in status["workers"]:
        step = f"{w.get('step')}/{w['max_steps']}" if w.get("max_steps") else "setting up"
        running = w["state"] == "running"
        workers.add_row(
            w["worker"],
            w["state"],
            str(w.get("trial")) if running else "",
            step if running else "",
            format_seconds(w["trial_seconds"]) if w["trial_seconds"] is not None else "",
            ",".join(map(str, w["gpus"])) if w.get("gpus") is not None else "",
            str(w.get("host", "")),
            str(w.get("pid", "")),
        )
    parts = [header, workers]
    if status["slurm"]:
        jobs = Table(title=f"{status['slurm']['cluster']} jobs ({status['slurm']['folder']})")
        for column in ("job", "worker", "state"):
            jobs.add_column(column)
        for job in status["slurm"]["jobs"]:
            jobs.add_row(str(job["job_id"]), job["worker"], job["state"])
        parts.append(jobs)
    return Group(*parts)


def print_status(sweep_dir: str | Path) -> None:
    """`sdexp sweep --status SWEEP`: the view, once."""
    from rich.console import Console

    Console().print(render_rich(sweep_status(sweep_dir)))


PLAIN_EVERY_SECONDS = 5.0  # off a terminal: one status line this often


class StatusDisplay:
    """The view while workers run: a ``rich.live`` table on a terminal, else a plain line every
    PLAIN_EVERY_SECONDS. ``update()`` is cheap to call every second; a study being written (a
    locked SQLite file) just skips that refresh."""

    def __init__(self, sweep_dir: str | Path, console=None, plain_every: float = PLAIN_EVERY_SECONDS):
        from rich.console import Console

        self.sweep_dir = Path(sweep_dir)
        self.console = console or Console()
        self.plain_every = plain_every
        self.live = None
        self._last_plain = 0.0

    def __enter__(self):
        if self.console.is_terminal:
            from rich.live import Live
            from rich.text import Text

            self.live = Live(Text("starting workers…"), console=self.console, auto_refresh=False)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def update(self, force: bool = False) -> dict | None:
        if self.live is None and not force and time.monotonic() - self._last_plain < self.plain_every:
            return None
        from sqlalchemy.exc import SQLAlchemyError

        try:
            status = sweep_status(self.sweep_dir)
        except (SQLAlchemyError, OSError, ValueError):  # the study mid-write (locked): next time
            return None
        if self.live is not None:
            self.live.update(render_rich(status), refresh=True)
        else:
            self._last_plain = time.monotonic()
            print(render_plain(status), flush=True)
        return status
