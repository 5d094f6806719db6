"""The report's plotly figures: Optuna's own study plots, and training curves from metrics.jsonl.

Optuna's ``best_trial`` cannot see sdexp's constraint (a user attribute, see sdexp/sweep/best.py),
so the history marks infeasible trials and the sweep's own best apart, and the Pareto front is drawn
with the same feasibility as its ``constraints_func``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from contextlib import contextmanager

from sdexp.sweep.best import complete_trials, direction_sign, is_feasible
from sdexp.sweep.layout import SweepInfo

CURVE_KEYS = ("train/loss", "val/loss")
KEY_METRICS = ("eval/clip_i", "eval/clip_t", "eval/dino", "eval/forgetting/clip_t_change", "eval/memorisation/nearest_mean")  # fmt: skip


@contextmanager
def _quiet():
    """Optuna's plots warn that some are experimental; a report reader cannot act on that."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _first_value(trial) -> float:
    """The first objective; an infinite one as NaN, which Optuna's plots leave out (an infinite point
    would flatten every axis)."""
    value = trial.values[0]
    return value if math.isfinite(value) else math.nan


def _first(info: SweepInfo):
    return _first_value, info.objectives[0]


def importance_target(info: SweepInfo):
    """The first objective, signed so that a low target is good (PED-ANOVA, Optuna's default
    evaluator, ranks low targets as the good ones)."""
    sign = direction_sign(info.directions[0])
    return lambda t: -sign * t.values[0]


def importances(info: SweepInfo, study) -> dict[str, float]:
    """Optuna's parameter importances for the first objective (raises when there is too little data)."""
    import optuna

    complete = complete_trials(study)
    params = {p for t in complete for p in t.params}
    varied = any(len({repr(t.params.get(p)) for t in complete}) > 1 for p in params)
    if len(complete) < 2 or not varied:
        raise ValueError("needs two complete trials with different parameters")
    with _quiet():
        return optuna.importance.get_param_importances(study, target=importance_target(info))


def _marker_trace(name: str, trials: list, symbol: str, colour: str, size: int = 12):
    import plotly.graph_objects as go

    finite = [t for t in trials if t.values and math.isfinite(t.values[0])]
    return go.Scatter(
        x=[t.number for t in finite], y=[t.values[0] for t in finite], mode="markers", name=name,
        marker={"symbol": symbol, "size": size, "color": colour, "line": {"width": 1, "color": "#333"}},
        hovertext=[f"trial {t.number}" for t in finite],
    )  # fmt: skip


def history_figure(info: SweepInfo, study, best: list):
    """Optuna's optimization history of the first objective, with infeasible trials and the
    sweep's (constraint-aware) best marked on top."""
    from optuna.visualization import plot_optimization_history

    target, name = _first(info)
    with _quiet():
        fig = plot_optimization_history(study, target=target, target_name=name)
    infeasible = [t for t in complete_trials(study) if is_feasible(t) is False]
    if infeasible:
        fig.add_trace(_marker_trace("infeasible", infeasible, "x", "#d62728", 10))
    if best:
        fig.add_trace(_marker_trace("sweep's best", best, "star", "#ffbf00", 16))
    fig.update_layout(title=f"Optimization history ({name})")
    return fig


def pareto_figure(info: SweepInfo, study):
    """Optuna's Pareto front over every objective; infeasible trials drawn as such."""
    from optuna.visualization import plot_pareto_front

    def constraints(trial) -> list[float]:
        return [float(trial.user_attrs.get("violation", 0.0) or 0.0)]

    with _quiet():
        return plot_pareto_front(study, target_names=list(info.objectives), constraints_func=constraints)


def study_figures(info: SweepInfo, study, best: list) -> list[tuple[str, object]]:
    """(title, figure or a one-line reason it is missing) for each of the sweep's study plots."""
    from optuna import visualization as vis

    target, name = _first(info)
    params = list(dict.fromkeys(p for t in complete_trials(study) for p in t.params))
    out: list[tuple[str, object]] = []

    def attempt(title: str, build) -> None:
        try:
            with _quiet():
                out.append((title, build()))
        except Exception as err:  # noqa: BLE001 - a report must render whatever the study holds
            out.append((title, f"{title}: not drawn ({err})"))

    if len(complete_trials(study)) == 0:
        return [("Plots", "no trial has completed yet: no plots")]
    if len(info.directions) > 1:
        attempt("Pareto front", lambda: pareto_figure(info, study))
    else:
        attempt("Optimization history", lambda: history_figure(info, study, best))
    attempt(
        "Parallel coordinates", lambda: vis.plot_parallel_coordinate(study, target=target, target_name=name)
    )
    attempt("Slices", lambda: vis.plot_slice(study, target=target, target_name=name))
    try:
        ranked = list(importances(info, study))
    except Exception as err:  # noqa: BLE001
        ranked, why = params, str(err)
    else:
        why = ""
    top = [p for p in ranked if p in params][:2]
    if len(top) < 2:
        out.append(
            ("Contour", f"Contour: not drawn (the sweep has {len(params)} parameter(s); it needs two)")
        )
    else:
        attempt(f"Contour of {top[0]} and {top[1]}", lambda: vis.plot_contour(study, params=top, target=target, target_name=name))  # fmt: skip
    if why:
        out.append(("Parameter importances", f"Parameter importances: not enough trials ({why})"))
    else:
        attempt(
            "Parameter importances",
            lambda: vis.plot_param_importances(study, target=importance_target(info), target_name=name),
        )
    return out


def metric_series(rows: Iterable[dict], key: str) -> list[tuple[float, float]]:
    """(step, value) of one metric over a run's metrics.jsonl rows, finite values only, last per step."""
    points: dict[float, float] = {}
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            points[float(row.get("step", 0))] = float(value)
    return sorted(points.items())


def curve_figure(key: str, series: dict[str, list[tuple[float, float]]]):
    """One metric against step, one line per labelled run."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, points in series.items():
        fig.add_trace(
            go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=label)
        )
    fig.update_layout(title=key, xaxis_title="step", yaxis_title=key, showlegend=len(series) > 1)
    return fig


def curve_keys(runs: Iterable[list[dict]], first: Iterable[str] = ()) -> list[str]:
    """The curves worth drawing: ``first`` keys, losses and key eval metrics that some run logged."""
    runs = list(runs)
    logged = {k for rows in runs for row in rows for k in row}
    wanted = [*first, *CURVE_KEYS, *KEY_METRICS]
    return [k for k in dict.fromkeys(wanted) if k in logged]
