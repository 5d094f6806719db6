"""The sweep folder, the one contract between `sdexp sweep`, `sdexp best` and `analysis.report`.

    SWEEP/
      sweep.yaml        the definition as run (after command-line overrides)
      sweep.json        study name, storage URL, objective names and directions, n_trials (kept in
                        step with the study's own, which every worker reads: stored_definition.py)
      study.db          the Optuna study (SQLite, the default storage; or elsewhere: sweep.json)
      trials/NNNN/      one run folder per Optuna trial number (config.yaml, metrics.jsonl, run.json,
                        run.log, best.json, best/, checkpoints/, samples/)
      report/           `sdexp report SWEEP` (and `sdexp sweep` at its end) writes index.html here
      workers/          <worker>.json: each worker's state, trial and step (sweep/worker_status.py);
                        <worker>.log: a --workers pool's child output; slurm.json + submitit/: jobs

Each Optuna trial carries these user attributes (set by the trial runner):
    run_dir          "trials/NNNN" (relative to SWEEP)
    best_checkpoint  e.g. "step-000050"; best_step: its step
    objectives       {name: value} of the best checkpoint (the trial's values, in sweep.json order)
    violation        the first objective's constraint violation at the best checkpoint (0 = feasible)
    metrics          every metric of the best checkpoint (best.json)
    seconds          {"setup", "train", "eval", "teardown", "total"}
    error            failed trials: "<Exception>: <message>"
    pruned_step      pruned trials: the step at which the pruner stopped it
    resumed_from     --resume-trials: {trial, checkpoint, step} of the attempt it went on from
Intermediate values (``trial.report``) are the first objective at each scored checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sdexp.atomic import write_json_atomic
from sdexp.errors import UserError

SWEEP_FILE = "sweep.json"
DEFINITION_FILE = "sweep.yaml"
DB_FILE = "study.db"
TRIALS_DIR = "trials"
REPORT_DIR = "report"


def trial_dir(sweep_dir: str | Path, number: int) -> Path:
    return Path(sweep_dir) / TRIALS_DIR / f"{number:04d}"


def default_storage(sweep_dir: str | Path) -> str:
    return f"sqlite:///{(Path(sweep_dir).resolve() / DB_FILE)}"


@dataclass
class SweepInfo:
    name: str
    study_name: str
    storage: str  # an Optuna storage URL, or journal:PATH
    objectives: list[str]  # objective names, in the order of the trial's values
    directions: list[str]  # "maximize" / "minimize", one per objective
    n_trials: int
    extra: dict = field(default_factory=dict)


def write_sweep_info(sweep_dir: str | Path, info: SweepInfo) -> Path:
    return write_json_atomic(Path(sweep_dir) / SWEEP_FILE, asdict(info))


def read_sweep_info(sweep_dir: str | Path) -> SweepInfo:
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise UserError(
            f"{sweep_dir}: not a sweep folder (no {SWEEP_FILE}); pass the folder `sdexp sweep` wrote"
        )
    return SweepInfo(**json.loads(path.read_text()))


STALE_AFTER_BEATS = 4  # a running trial silent for this many heartbeats is failed and retried


def sqlalchemy_url(url: str) -> str:
    """``url`` as SQLAlchemy should open it. A plain ``postgresql://`` (or ``postgres://``) URL means
    psycopg2 to SQLAlchemy, which sdexp does not install: it is opened with psycopg 3
    (``postgresql+psycopg://``, the ``sdexp[postgres]`` extra), and missing psycopg is one line."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            url = "postgresql+psycopg://" + url.removeprefix(plain)
    if url.startswith("postgresql+psycopg://"):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise UserError(
                "--storage: a PostgreSQL storage needs psycopg 3: pip install 'sdexp[postgres]'"
            ) from None
    return url


def open_storage(url: str, heartbeat_seconds: int = 30):
    """An Optuna storage for a URL: ``sqlite:///…``, ``postgresql://…`` (RDB, with heartbeats so
    a trial left running by a killed worker is noticed), or ``journal:PATH`` (a journal file)."""

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    return RDBStorage(
        sqlalchemy_url(url),
        heartbeat_interval=heartbeat_seconds,
        grace_period=STALE_AFTER_BEATS * heartbeat_seconds,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
        engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
    )


def load_study(sweep_dir: str | Path):
    """(SweepInfo, optuna.Study) of a sweep folder, read-only use."""
    import optuna

    from sdexp.quiet import quiet_optuna

    quiet_optuna()
    info = read_sweep_info(sweep_dir)
    try:
        study = optuna.load_study(study_name=info.study_name, storage=open_storage(info.storage))
    except KeyError:
        raise UserError(f"{sweep_dir}: study {info.study_name!r} is not in {info.storage}") from None
    return info, study
