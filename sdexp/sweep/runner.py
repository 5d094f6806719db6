"""`sdexp sweep`: drive an Optuna study over run configs with ask/tell, one run folder per trial.

The loop is ours rather than ``study.optimize`` so that the trial count is exact across restarts
and workers: under the study lock (claim_lock.py: the sweep folder's, or PostgreSQL's advisory
lock across machines) each worker counts finished and running trials before asking for a new
one. Grid points are enqueued once, when the study is created. A failed trial (exception, NaN,
out of memory, a sampled value the config rejects) is told FAIL with its reason and the sweep goes
on; Ctrl-C fails the running trial, enqueues its parameters again and stops, so the next
invocation reruns it. With an RDB storage each running trial sends heartbeats;
a trial whose worker was killed is failed after 4 silent heartbeats and retried with the same
parameters (Optuna's RetryFailedTrialCallback).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sdexp.atomic import atomic_write_bytes
from sdexp.callbacks.base import Callback
from sdexp.errors import ConfigError, UserError
from sdexp.models.base_pool import POOL, reusing_bases
from sdexp.quiet import quiet_optuna
from sdexp.sweep import stored_definition
from sdexp.sweep.claim_lock import study_lock
from sdexp.sweep.definition import SweepDefinition, check_composes, format_value, trial_overrides
from sdexp.sweep.layout import (
    DEFINITION_FILE,
    STALE_AFTER_BEATS,
    SweepInfo,
    default_storage,
    open_storage,
    read_sweep_info,
    trial_dir,
    write_sweep_info,
)
from sdexp.tracking.run_log import RUN_LOG, run_log

INFEASIBLE = 1e9  # pruners see numbers only: a checkpoint breaking a constraint reads this much worse


def pruner_value(value: float, violation: float, direction: str) -> float:
    """The running best objective as the pruner sees it: a feasible value as it is; an infeasible
    one below (maximize) or above (minimize) every feasible value, ordered by its violation, as
    checkpoints are ordered for best/."""
    if violation <= 0:
        return value
    return -INFEASIBLE - violation if direction == "maximize" else INFEASIBLE + violation


class TrialPruning(Callback):
    """Reports the trial's running best objective at each scored checkpoint; stops it when the
    pruner says so (the run still writes its final checkpoint and is scored like any other)."""

    def __init__(self, trial, objective: str, direction: str):
        self.trial, self.objective, self.direction = trial, objective, direction
        self.violation_key = f"objective/{objective}/violation"
        self.pruned_step: int | None = None

    def on_checkpoint_scored(self, trainer, module, metrics: dict) -> None:
        from sdexp.callbacks.scoring import CheckpointScoring

        step = trainer.state.step
        if step == 0 or trainer.should_stop:
            return
        scoring = next((cb for cb in trainer.callbacks if isinstance(cb, CheckpointScoring)), None)
        best = scoring.best if scoring is not None else None
        if best:
            value, violation = (
                best["objectives"][self.objective],
                float(best["metrics"].get(self.violation_key, 0.0)),
            )
        else:
            value, violation = (
                metrics[f"objective/{self.objective}"],
                float(metrics.get(self.violation_key, 0.0)),
            )
        self.trial.report(pruner_value(float(value), violation, self.direction), step)
        if self.trial.should_prune():
            trainer.should_stop = True
            self.pruned_step = step
            trainer.state.stop_reason = f"pruned at step {step} (objective/{self.objective} = {value:.6g})"


class Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds while it runs (RDB storages)."""

    def __init__(self, storage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.is_set():
            self.storage.record_heartbeat(self.trial_id)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def make_sampler(definition: SweepDefinition, multi: bool, worker: int = 0):
    """The definition's sampler. Worker k of a study (k-th invocation on it) seeds with seed + k:
    workers sharing a seed would propose the same parameters; a fresh single worker stays
    reproducible."""
    import optuna

    spec = dict(definition.sampler)
    name = spec.pop("name")
    if spec.get("seed") is not None:
        spec["seed"] = int(spec["seed"]) + worker
    try:
        if name in ("grid", "random"):  # grid points are enqueued; random draws what is left
            return optuna.samplers.RandomSampler(**spec)
        if name == "tpe":
            return optuna.samplers.TPESampler(**spec)
        if name == "qmc":
            return optuna.samplers.QMCSampler(**spec)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(**spec)
    except TypeError as err:
        raise ConfigError(f"sampler: {err}") from None
    raise ConfigError(f"sampler.name: {name!r} is not supported")


def make_pruner(definition: SweepDefinition, multi: bool):
    import optuna

    spec = dict(definition.pruner)
    name = spec.pop("name")
    if name != "none" and multi:
        raise ConfigError("pruner: Optuna cannot prune multi-objective studies; set pruner: none")
    classes = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    }
    try:
        return classes[name](**spec)
    except TypeError as err:
        raise ConfigError(f"pruner: {err}") from None


@dataclass
class SweepOutcome:
    completed: int
    pruned: int
    failed: int
    stopped: str  # why this invocation ended
    # It stopped on failures and no trial of the study has finished: ``stopped`` says why, in one line.
    failed_out: bool = False


SAME_ERROR_STREAK = 3  # max_failures: null stops after this many failures in a row with one error


def _error_kind(error: str) -> str:
    """An error with its numbers blanked, so "loss is nan at step 3" and "... step 7" are one error."""
    return re.sub(r"\d+", "#", error)


def shown_path(path: Path) -> str:
    """``path`` as a user can paste it: relative to the working folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {(text.splitlines()[0] if text else '')[:300]}"


class SweepRunner:
    def __init__(
        self,
        definition: SweepDefinition,
        sweep_dir: str | Path,
        *,
        extra_overrides: list[str] = (),
        storage: str | None = None,
        notify=print,
        resume_trials: bool = False,
        reuse_base: bool = True,
        gpus_per_trial: int = 1,
        n_trials_requested: int | None = None,
    ):
        from sdexp.sweep.ddp_trial import check_gpus_per_trial

        self.gpus_per_trial = check_gpus_per_trial(gpus_per_trial, resume_trials)  # processes per trial
        self.n_trials_requested = n_trials_requested  # --n-trials: sets the study's count for every worker
        self.definition, self.extra = definition, list(extra_overrides)
        self.reuse_base = reuse_base  # one loaded base lent to trial after trial (models/base_pool.py)
        self.resume_trials = resume_trials  # retried trials go on from their checkpoint (resume_trials.py)
        self.sweep_dir = Path(sweep_dir).resolve()
        self.requested_storage = storage
        self.notify = notify

    # ----- set-up ---------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        d = self.definition
        text = json.dumps(
            {"space": {k: asdict(v) for k, v in d.space.items()}, "sampler": d.sampler, "pruner": d.pruner,
             "overrides": d.overrides + self.extra, "objectives": d.objectives},
            sort_keys=True, default=str,
        )  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def prepare(self):
        """Check everything, then create or reopen the study; returns (info, study)."""
        import optuna

        from sdexp.run import preflight

        quiet_optuna()
        d = self.definition
        base = check_composes(d, self.extra)
        preflight(base)  # data, model and judges exist before the first trial
        names = [o.name for o in base.eval.objectives]
        chosen = d.objectives or names
        unknown = [n for n in chosen if n not in names]
        if unknown:
            raise ConfigError(
                f"objectives: {unknown[0]!r} is not among the run's eval.objectives ({', '.join(names)})"
            )
        directions = [next(o.direction for o in base.eval.objectives if o.name == n) for n in chosen]
        if len(chosen) > 1 and d.objectives is None and len(names) > 1:
            self.notify(
                f"{len(chosen)} objectives ({', '.join(chosen)}): a multi-objective study (Pareto front)"
            )
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        local = read_sweep_info(self.sweep_dir) if (self.sweep_dir / "sweep.json").exists() else None
        storage_url = local.storage if local else self.requested_storage or default_storage(self.sweep_dir)
        with study_lock(storage_url, self.sweep_dir, local.study_name if local else d.name):
            info = self._info(chosen, directions)
            storage = open_storage(info.storage, d.heartbeat_seconds)
            multi = len(directions) > 1
            study = optuna.create_study(
                study_name=info.study_name,
                storage=storage,
                directions=directions,
                pruner=make_pruner(d, multi),
                load_if_exists=True,
            )
            worker = int(study.user_attrs.get("workers", 0))
            study.set_user_attr("workers", worker + 1)
            study.sampler = make_sampler(d, multi, worker)
            if d.sampler_name == "grid" and not study.user_attrs.get("grid_enqueued"):
                for params in d.grid():
                    study.enqueue_trial(params)
                study.set_user_attr("grid_enqueued", True)
            n_trials = stored_definition.settle_n_trials(
                study, d, info, self.extra, requested=self.n_trials_requested,
                local_before=local.n_trials if local else None, notify=self.notify,
            )  # fmt: skip
            if n_trials != info.n_trials:  # this folder's sweep.json follows the study's count
                info.n_trials = n_trials
                write_sweep_info(self.sweep_dir, info)
        self.info, self.study, self.base, self.storage = info, study, base, storage
        return info, study

    def _info(self, objectives: list[str], directions: list[str]) -> SweepInfo:
        import yaml

        d = self.definition
        fingerprint = self._fingerprint()
        if (self.sweep_dir / "sweep.json").exists():
            info = read_sweep_info(self.sweep_dir)
            if info.extra.get("fingerprint") != fingerprint:
                raise UserError(
                    f"{self.sweep_dir} holds study {info.study_name!r} of a different sweep definition or overrides; "
                    "resume with the same ones, or pass a new --out"
                )
            if self.requested_storage and self.requested_storage != info.storage:
                raise UserError(
                    f"--storage: this sweep's study lives in {info.storage}; pass that, or a new --out"
                )
            if d.n_trials != info.n_trials:  # e.g. --n-trials 20 on a finished 10-trial study: 10 more
                self.notify(f"n_trials: {info.n_trials} -> {d.n_trials} for study {info.study_name}")
                info.n_trials = d.n_trials
                write_sweep_info(self.sweep_dir, info)
            return info
        info = SweepInfo(
            name=d.name,
            study_name=d.name,
            storage=self.requested_storage or default_storage(self.sweep_dir),
            objectives=objectives,
            directions=directions,
            n_trials=d.n_trials,
            extra={"fingerprint": fingerprint, "overrides": d.overrides + self.extra},
        )
        definition = {"name": d.name, "overrides": d.overrides + self.extra, "space": {k: _plain(v) for k, v in d.space.items()},
                      "sampler": d.sampler, "pruner": d.pruner, "n_trials": d.n_trials,
                      "timeout_minutes": d.timeout_minutes, "objectives": objectives}  # fmt: skip
        atomic_write_bytes(
            self.sweep_dir / DEFINITION_FILE, yaml.safe_dump(definition, sort_keys=False).encode()
        )
        write_sweep_info(self.sweep_dir, info)
        return info

    # ----- the loop -------------------------------------------------------------------------
    def _counts(self) -> dict:
        from optuna.trial import TrialState

        counts = {s: 0 for s in TrialState}
        for t in self.study.get_trials(deepcopy=False):
            counts[t.state] += 1
        return counts

    def _claim(self):
        """A new trial to run, or None with the reason the sweep is done (under the study lock;
        n_trials is the study's, which a worker on another machine may have changed)."""
        import optuna
        from optuna.trial import TrialState

        waited = 0.0
        while True:
            with study_lock(self.info.storage, self.sweep_dir, self.info.study_name):
                optuna.storages.fail_stale_trials(self.study)  # a no-op without heartbeats
                n_trials = stored_definition.shared_n_trials(self.study, self.info.n_trials)
                if n_trials != self.info.n_trials:
                    self.notify(f"n_trials: {self.info.n_trials} -> {n_trials} (set by another worker)")
                    self.info.n_trials = n_trials
                    write_sweep_info(self.sweep_dir, self.info)
                c = self._counts()
                done = c[TrialState.COMPLETE] + c[TrialState.PRUNED]
                if done >= self.info.n_trials:
                    return None, f"{done} of {self.info.n_trials} trials finished"
                if (
                    self.definition.sampler_name == "grid"
                    and c[TrialState.WAITING] == 0
                    and c[TrialState.RUNNING] == 0
                ):
                    return None, "every grid point has run"
                if done + c[TrialState.RUNNING] < self.info.n_trials and (
                    self.definition.sampler_name != "grid" or c[TrialState.WAITING] > 0
                ):
                    return self.study.ask(), None
            # Every remaining slot is held by a running trial: another worker's, or one whose
            # worker died (failed after the grace period, then retried). Wait for either.
            grace = (STALE_AFTER_BEATS + 1) * self.definition.heartbeat_seconds
            if waited > grace:
                return None, f"{c[TrialState.RUNNING]} trials are still running in other workers"
            time.sleep(min(self.definition.heartbeat_seconds, 5))
            waited += min(self.definition.heartbeat_seconds, 5)

    def run(self, *, timeout_minutes: float | None = None) -> SweepOutcome:
        """Claim and run trials until the study has n_trials finished, the time budget is spent,
        or too many trials failed in this invocation: ``max_failures``; by default (null)
        SAME_ERROR_STREAK in a row with one error while no trial of the study has finished (a
        mistake every trial will repeat), else n_trials. Stopped on failures with nothing finished,
        the outcome is ``failed_out`` and the caller reports ``stopped`` (one line); else it is
        notified here."""
        from optuna.trial import TrialState

        d = self.definition
        timeout = timeout_minutes if timeout_minutes is not None else d.timeout_minutes
        deadline = time.time() + 60 * timeout if timeout else None
        max_failures = d.max_failures or self.info.n_trials
        with reusing_bases(self.reuse_base):
            stopped, on_failures = self._loop(deadline, timeout, max_failures)
        c = self._counts()
        failed_out = on_failures and c[TrialState.COMPLETE] + c[TrialState.PRUNED] == 0
        if failed_out:
            stopped = f"sweep {self.info.name}: {stopped}"
        else:
            self.notify(f"sweep {self.info.name}: {stopped}")
        return SweepOutcome(
            c[TrialState.COMPLETE], c[TrialState.PRUNED], c[TrialState.FAIL], stopped, failed_out
        )

    def _loop(self, deadline: float | None, timeout: float | None, max_failures: int) -> tuple[str, bool]:
        """Run trials until one of ``run``'s reasons to stop: (why, whether on failures)."""
        from optuna.trial import TrialState

        d = self.definition
        ran, failures, streak = 0, [], []  # failures: (trial number, error); streak: since the last success
        stopped, on_failures = "", False
        while True:
            if deadline and time.time() >= deadline:
                stopped = f"time budget of {timeout:g} minutes spent"
                break
            if len(failures) >= max_failures or (d.max_failures is None and self._same_error(streak)):
                stopped, on_failures = self._failure_summary(failures, ran), True
                break
            trial, stopped = self._claim()
            if trial is None:
                break
            state, error = self._run_trial(trial)
            ran += 1
            if state == TrialState.FAIL:
                failures.append((trial.number, error))
                streak.append((trial.number, error))
            else:
                streak.clear()
        return stopped, on_failures

    def _same_error(self, streak: list[tuple[int, str]]) -> bool:
        """The last SAME_ERROR_STREAK trials failed alike and no trial of the study has finished."""
        from optuna.trial import TrialState

        last = streak[-SAME_ERROR_STREAK:]
        if len(last) < SAME_ERROR_STREAK or len({_error_kind(e) for _, e in last}) > 1:
            return False
        c = self._counts()
        return c[TrialState.COMPLETE] + c[TrialState.PRUNED] == 0

    def _failure_summary(self, failures: list[tuple[int, str]], ran: int) -> str:
        """One line: how many failed, the error, and the run.log to read."""
        same = len({_error_kind(e) for _, e in failures}) == 1
        number, error = failures[0] if same else failures[-1]
        log = shown_path(trial_dir(self.sweep_dir, number) / RUN_LOG)
        if same and len(failures) == ran:
            return f"all {ran} trials failed with the same error: {error} — see {log}"
        how_many = f"all {ran} trials" if len(failures) == ran else f"{len(failures)} of {ran} trials"
        return f"{how_many} failed (max_failures); the last: {error} — see {log}"

    def _run_trial(self, trial) -> tuple:
        """Run one claimed trial and tell the study; returns (its TrialState, its error or None)."""
        import optuna
        from optuna.trial import TrialState

        from sdexp.entry import compose_run_config
        from sdexp.run import train_run
        from sdexp.sweep.worker_status import WorkerStatus

        d, info = self.definition, self.info
        number = trial.number
        run_dir = trial_dir(self.sweep_dir, number)
        trial.set_user_attr("run_dir", str(run_dir.relative_to(self.sweep_dir)))
        started = time.time()
        pruning = (
            TrialPruning(trial, info.objectives[0], info.directions[0]) if len(info.objectives) == 1 else None
        )
        beat = (  # the study wraps its storage in a cache; heartbeats go to the RDB storage itself
            Heartbeat(self.storage, trial._trial_id, d.heartbeat_seconds)
            if isinstance(self.storage, optuna.storages.RDBStorage)
            else contextlib.nullcontext()
        )
        log = run_dir / RUN_LOG
        callbacks = [pruning] if pruning else []
        callbacks.append(WorkerStatus(self.sweep_dir, number))  # SWEEP/workers/<id>.json: trial, step
        try:
            resume_from = None
            if self.resume_trials:
                from sdexp.sweep.resume_trials import prepare_resumed_trial

                resume_from = prepare_resumed_trial(self.sweep_dir, self.study, trial, self.notify)
            with beat, run_log(log):  # from the sampled values to the traceback, if it fails
                params = {key: spec.suggest(trial) for key, spec in d.space.items()}
                self.notify(
                    f"trial {number}: " + " ".join(f"{k}={format_value(v)}" for k, v in params.items())
                )
                if resume_from is not None:  # the copied folder's own config and W&B run
                    from sdexp.resume import resume_run

                    result = resume_run(resume_from, notify=self.notify, callbacks=callbacks)
                else:
                    cfg = compose_run_config(
                        [
                            *trial_overrides(d, params, self.extra),
                            f"logger.group={info.study_name}",
                            f"logger.run_name={info.study_name}-{number:04d}",
                            f"logger.tags=[sweep,{info.study_name}]",
                            f"logger.hparams=[{','.join(repr(k) for k in d.space)}]",  # W&B/TB compare these
                            *(["train.save_state=true"] if self.resume_trials else []),
                        ]
                    )
                    if self.gpus_per_trial > 1:  # a torchrun child trains it (sweep/ddp_trial.py)
                        from sdexp.sweep.ddp_trial import train_in_processes

                        result = train_in_processes(self, trial, cfg, run_dir, pruning)
                    else:
                        result = train_run(cfg, run_dir, notify=self.notify, callbacks=callbacks)
                # The base goes back restored and checked now, so the next trial borrows a sound one.
                dropped = POOL.release()
                if dropped:
                    self.notify(f"trial {number}: the base will be reloaded for the next trial: {dropped}")
        except KeyboardInterrupt:
            trial.set_user_attr(
                "error", "KeyboardInterrupt: stopped by the user; the next invocation reruns it"
            )
            self.study.tell(trial, state=TrialState.FAIL)
            self.study.enqueue_trial(trial.params, user_attrs={"retry_of": number})
            raise
        except Exception as err:  # a failed trial never takes the sweep down
            error = _first_line(err)
            trial.set_user_attr("error", error)
            self.notify(f"trial {number} failed: {error} (log: {shown_path(log)})")
            _free_accelerator_memory()
            self.study.tell(trial, state=TrialState.FAIL)
            return TrialState.FAIL, error
        best = result.best or {}
        run = json.loads((result.run_dir / "run.json").read_text())
        timings = run.get("timings", {})
        evaluation = (run.get("evaluation") or {}).get("seconds", 0.0)
        trial.set_user_attr("best_checkpoint", best.get("checkpoint"))
        trial.set_user_attr("best_step", best.get("step"))
        trial.set_user_attr("objectives", best.get("objectives"))
        trial.set_user_attr("metrics", best.get("metrics"))
        violation = 0.0
        if best.get("metrics"):
            violation = float(best["metrics"].get(f"objective/{info.objectives[0]}/violation", 0.0))
        trial.set_user_attr("violation", violation)
        trial.set_constraint("violation", violation)  # constraint-aware samplers (TPE, NSGA-II) read it
        pool = {k: round(v, 3) for k, v in POOL.last.items() if k.endswith("_seconds")}
        trial.set_user_attr("base_reused", bool(POOL.last.get("reused")))
        trial.set_user_attr(
            "seconds",
            {**timings, "eval": evaluation, **pool, "total": round(time.time() - started, 3)},
        )
        if pruning is not None and pruning.pruned_step is not None:
            trial.set_user_attr("pruned_step", pruning.pruned_step)
            self.study.tell(trial, state=TrialState.PRUNED)
            self.notify(f"trial {number} pruned at step {pruning.pruned_step}")
            return TrialState.PRUNED, None
        if not best.get("objectives"):
            error = "RuntimeError: the run produced no objective (no scored checkpoint)"
            trial.set_user_attr("error", error)
            self.study.tell(trial, state=TrialState.FAIL)
            return TrialState.FAIL, error
        values = [float(best["objectives"][name]) for name in info.objectives]
        self.study.tell(trial, values[0] if len(values) == 1 else values)
        self.notify(f"trial {number}: " + ", ".join(f"{n} {v:.4g}" for n, v in zip(info.objectives, values, strict=True))
                    + f" at {best.get('checkpoint')}" + ("" if violation == 0 else f" (violates constraints by {violation:.3g})"))  # fmt: skip
        return TrialState.COMPLETE, None


def _plain(spec) -> dict:
    return {k: v for k, v in asdict(spec).items() if v is not None and k != "key" and v is not False}


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
