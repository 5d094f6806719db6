"""Which trial won: the feasible trial with the best value (one objective), or the Pareto set.

Feasibility comes from the trial's ``violation`` user attribute (the first objective's constraint
violation at its best checkpoint), which Optuna's own ``best_trial(s)`` cannot see: an infeasible
trial must not win, nor push feasible ones off a Pareto front.
"""

from __future__ import annotations

from pathlib import Path

from sdexp.sweep.layout import SweepInfo, load_study, trial_dir
from sdexp.tracking.run_log import RUN_LOG


def _violation(trial) -> float:
    return float(trial.user_attrs.get("violation", 0.0) or 0.0)


def is_feasible(trial) -> bool | None:
    """The trial runner's verdict (user attr ``violation`` == 0); None when it recorded none."""
    violation = trial.user_attrs.get("violation")
    return None if violation is None else float(violation) == 0


def direction_sign(direction: str) -> float:
    return 1.0 if direction == "maximize" else -1.0


def complete_trials(study) -> list:
    import optuna

    return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]


def _first_objective_key(info: SweepInfo):
    """Sort key: feasible (or unknown) trials first, then the first objective's value, best first."""
    sign = direction_sign(info.directions[0])
    return lambda t: (is_feasible(t) is False, _violation(t), -sign * t.values[0], t.number)


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def _pareto(info: SweepInfo, trials: list) -> list:
    signs = [direction_sign(d) for d in info.directions]
    scored = [(t, [s * v for s, v in zip(signs, t.values)]) for t in trials]
    return [t for t, v in scored if not any(_dominates(w, v) for _, w in scored)]


def best_trials(info: SweepInfo, study) -> list:
    """The sweep's answer, as FrozenTrials; [] while no trial has completed.

    One objective: the single best COMPLETE trial, feasible (user attr ``violation`` == 0) before
    infeasible, then by value in the objective's direction. Several objectives: the Pareto set, like
    ``study.best_trials``, but taken among the feasible trials when any is feasible (a constraint
    recorded as a user attribute is invisible to Optuna), ordered by the first objective.
    """
    complete = complete_trials(study)
    if not complete:
        return []
    key = _first_objective_key(info)
    if len(info.directions) == 1:
        return [min(complete, key=key)]
    feasible = [t for t in complete if is_feasible(t) is not False]
    return sorted(_pareto(info, feasible or complete), key=key)


def ranked_trials(info: SweepInfo, study) -> list:
    """Every COMPLETE trial, best_trials() first, then the rest by the first objective's key."""
    best = best_trials(info, study)
    numbers = {t.number for t in best}
    return best + sorted(
        (t for t in complete_trials(study) if t.number not in numbers), key=_first_objective_key(info)
    )


def trial_run_dir(sweep_dir: str | Path, trial) -> Path:
    """The trial's run folder: its ``run_dir`` user attribute, relative to the sweep folder."""
    rel = trial.user_attrs.get("run_dir")
    return Path(sweep_dir) / rel if rel else trial_dir(sweep_dir, trial.number)


def best_rows(sweep_dir: str | Path) -> tuple[SweepInfo, list[dict]]:
    """(SweepInfo, one dict per best trial: number, params, objectives, checkpoint, run folder)."""
    info, study = load_study(sweep_dir)
    rows = []
    for t in best_trials(info, study):
        run_dir = trial_run_dir(sweep_dir, t)
        rows.append(
            {
                "trial": t.number,
                "params": t.params,
                "objectives": dict(zip(info.objectives, t.values, strict=True)),
                "feasible": float(t.user_attrs.get("violation", 0.0) or 0.0) == 0.0,
                "checkpoint": t.user_attrs.get("best_checkpoint"),
                "step": t.user_attrs.get("best_step"),
                "run_dir": str(run_dir),
                "best_dir": str(run_dir / "best"),
                "metrics": t.user_attrs.get("metrics") or {},
            }
        )
    return info, rows


def failed_rows(sweep_dir: str | Path, study=None) -> list[dict]:
    """One dict per FAIL trial, oldest first: number, params, error (the exception's first line, as
    the trial runner recorded it; None for a worker lost without a word) and its run.log path."""
    import optuna

    if study is None:
        _, study = load_study(sweep_dir)
    return [
        {
            "trial": t.number,
            "params": t.params,
            "error": t.user_attrs.get("error"),
            "log": str(trial_run_dir(sweep_dir, t) / RUN_LOG),
        }
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    ]
