"""An HTML report of a sweep, built only from its Optuna study and its trials' run folders.

sdexp report SWEEP [--out DIR]                  # writes DIR/index.html (default SWEEP/report/)
python -m analysis.report SWEEP [--out DIR]     # the same, from a checkout

The page is one file with inline SVG charts; images are copied into DIR/images/ so the folder can be
moved or shared on its own. Anything missing (a run folder, best.json, samples) shows as "—".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import warnings
from html import escape
from pathlib import Path

from analysis.svg_chart import PALETTE, axis_titles, line_chart, ticks, y_gridline
from sdexp.atomic import atomic_write_bytes
from sdexp.sweep.best import (
    best_trials,
    complete_trials,
    direction_sign,
    failed_rows,
    is_feasible,
    ranked_trials,
    trial_run_dir,
)
from sdexp.sweep.layout import REPORT_DIR, SweepInfo, load_study, read_sweep_info
from sdexp.tracking.run_folder import read_metrics, sanitise_key

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
KEY_METRICS = ("eval/clip_i", "eval/clip_t", "eval/forgetting/clip_t_change", "eval/memorisation/nearest_mean", "val/loss")  # fmt: skip
SAMPLES_KEY = "eval_subject"
DASH = "—"
CSS = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f4f4f4}tr.best{background:#fff6d5}
td.l,th.l{text-align:left}.bar{background:#1f77b4;height:10px}figure{display:inline-block;margin:4px}
figcaption{font-size:11px;max-width:200px}code{background:#f4f4f4;padding:2px 4px}svg{margin:4px}"""


# ---- reading ---------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _read_index(folder: Path) -> list[dict]:
    """Entries of a samples index.jsonl; unreadable lines are skipped (a torn write)."""
    try:
        lines = (folder / "index.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return [e for e in entries if isinstance(e, dict) and "step" in e]


def _safe_metrics(run_dir: Path) -> list[dict]:
    try:
        return read_metrics(run_dir)
    except (OSError, ValueError):
        return []


# ---- formatting ------------------------------------------------------------------------------------


def _fmt(value) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cell(value, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{escape(_fmt(value))}</td>"


def _mask(url: str) -> str:
    """The storage URL without its password, fit to show in a page that may be shared."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


def dashboard_command(storage: str) -> str:
    """The shell command that opens the study in optuna-dashboard (a journal file is given by path)."""
    target = storage.removeprefix("journal:") if storage.startswith("journal:") else storage
    return f"optuna-dashboard {shlex.quote(target)}"


def _duration(trial) -> str | None:
    """Wall seconds from start to finish, as Optuna timed them; None while unfinished."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return f"{(trial.datetime_complete - trial.datetime_start).total_seconds():.1f}"


# ---- sections --------------------------------------------------------------------------------------


def _header_html(info: SweepInfo, study) -> str:
    counts = {s: 0 for s in STATES}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    objectives = ", ".join(f"{o} ({d})" for o, d in zip(info.objectives, info.directions))
    rows = [
        ("sweep", info.name),
        ("study", info.study_name),
        ("storage", _mask(info.storage)),
        ("objectives", objectives),
        ("trials", " · ".join(f"{s} {n}" for s, n in counts.items()) + f" (planned {info.n_trials})"),
    ]
    body = "".join(f'<tr><th class="l">{escape(k)}</th><td class="l">{escape(v)}</td></tr>' for k, v in rows)
    return f"<h1>Sweep {escape(info.name)}</h1><table>{body}</table>"


def _trials_table_html(info: SweepInfo, study, best_numbers: set[int]) -> str:
    trials = study.get_trials(deepcopy=False)
    params = list(dict.fromkeys(p for t in trials for p in t.params))
    metrics = [m for m in KEY_METRICS if any(m in (t.user_attrs.get("metrics") or {}) for t in trials)]
    heads = ["#", "state", *params, *info.objectives, "feasible", "best checkpoint", *metrics]
    heads += ["seconds", "pruned step", "error"]
    out = [
        "<h2>Trials</h2><p>★ marks the best trial (the Pareto set with several objectives).</p><table><tr>"
    ]
    out += [f"<th>{escape(h)}</th>" for h in heads] + ["</tr>"]
    for t in trials:
        best = t.number in best_numbers
        feasible = is_feasible(t)
        error = t.user_attrs.get("error")
        short = None if error is None else (error if len(error) <= 120 else error[:117] + "...")
        # The best checkpoint's objectives; a pruned trial's Optuna value is the pruner's view of
        # it (an infeasible checkpoint reads -1e9), not a score to show.
        scored = t.user_attrs.get("objectives") or {}
        if scored:
            values = [scored.get(o) for o in info.objectives]
        else:
            values = list(t.values) if t.values else [None] * len(info.objectives)
        out.append('<tr class="best">' if best else "<tr>")
        out.append(f"<td>{'★ ' if best else ''}{t.number}</td>" + _cell(t.state.name, "l"))
        out += [_cell(t.params.get(p)) for p in params] + [_cell(v) for v in values]
        out.append(_cell(None if feasible is None else ("yes" if feasible else "no")))
        out.append(_cell(t.user_attrs.get("best_checkpoint"), "l"))
        out += [_cell((t.user_attrs.get("metrics") or {}).get(m)) for m in metrics]
        out += [_cell(_duration(t)), _cell(t.user_attrs.get("pruned_step"))]
        title = f' title="{escape(error)}"' if error else ""
        out.append(f'<td class="l"{title}>{escape(_fmt(short))}</td></tr>')
    return "".join(out) + "</table>"


def _best_html(info: SweepInfo, best: list) -> str:
    title = "Best trial" if len(info.directions) == 1 else f"Pareto set ({len(best)} trials)"
    if not best:
        return f"<h2>{title}</h2><p>{DASH} no trial has completed</p>"
    items = []
    for t in best:
        values = ", ".join(f"{o} = {_fmt(v)}" for o, v in zip(info.objectives, t.values))
        params = ", ".join(f"{k} = {_fmt(v)}" for k, v in t.params.items())
        ckpt = t.user_attrs.get("best_checkpoint") or DASH
        items.append(
            f"<li>trial {t.number}: {escape(values)}; checkpoint {escape(ckpt)}; {escape(params)}</li>"
        )
    return f"<h2>{title}</h2><ul>{''.join(items)}</ul>"


def _failures_html(sweep_dir: Path, study, out: Path) -> str:
    """Each failed trial's error in full and a link to its run.log (output and traceback)."""
    failed = failed_rows(sweep_dir, study)
    if not failed:
        return ""
    rows = []
    for f in failed:
        log = Path(f["log"])
        shown = escape(os.path.relpath(log, sweep_dir))
        link = (
            f'<a href="{escape(os.path.relpath(log, out), quote=True)}">{shown}</a>'
            if log.is_file()
            else f"{shown} (missing)"
        )
        params = ", ".join(f"{k} = {_fmt(v)}" for k, v in f["params"].items())
        rows.append(
            f'<tr><td>{f["trial"]}</td><td class="l">{escape(_fmt(f["error"]))}</td>'
            f'<td class="l">{escape(params)}</td><td class="l">{link}</td></tr>'
        )
    head = '<tr><th>#</th><th class="l">error</th><th class="l">parameters</th><th class="l">log</th></tr>'
    return f"<h2>Failed trials ({len(failed)})</h2><table>{head}{''.join(rows)}</table>"


def importances(info: SweepInfo, study) -> dict[str, float]:
    """Optuna's parameter importances for the first objective (raises when there is too little data)."""
    import optuna

    complete = complete_trials(study)
    params = {p for t in complete for p in t.params}
    varied = any(len({repr(t.params.get(p)) for t in complete}) > 1 for p in params)
    if len(complete) < 2 or not varied:
        raise ValueError("needs two complete trials with different parameters")
    sign = direction_sign(info.directions[0])  # the default evaluator (PED-ANOVA) ranks low targets as good
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.importance.get_param_importances(study, target=lambda t: -sign * t.values[0])


def _importances_html(info: SweepInfo, study) -> str:
    head = f"<h2>Parameter importances ({escape(info.objectives[0])})</h2>"
    try:
        values = importances(info, study)
    except Exception as err:  # noqa: BLE001 - a report must render whatever the study holds
        return f"{head}<p>not enough trials ({escape(str(err))})</p>"
    rows = "".join(
        f'<tr><td class="l">{escape(p)}</td><td>{v:.3f}</td>'
        f'<td class="l" style="width:300px"><div class="bar" style="width:{100 * v:.1f}%"></div></td></tr>'
        for p, v in values.items()
    )
    return f"{head}<table><tr><th>parameter</th><th>importance</th><th></th></tr>{rows}</table>"


def _padded(lo: float, hi: float) -> tuple[float, float]:
    """A range with 5% room on each side, so no point sits on the frame."""
    return (lo - 0.5, hi + 0.5) if hi <= lo else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))


def scatter_chart(
    series: dict[str, list[tuple[float, float, str]]],
    *,
    categories: list[str] | None = None,
    logx: bool = False,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    width: int = 420,
    height: int = 280,
) -> str:
    """An SVG of (x, y, tooltip) points per series; x is a category index when ``categories`` is given."""
    left, right, top, bottom = 64, 16, 44, 44
    points = [p for pts in series.values() for p in pts]
    if not points:
        raise ValueError("no points to draw")
    fx = math.log10 if logx else (lambda x: x)
    xs, ys = [fx(p[0]) for p in points], [p[1] for p in points]
    x0, x1 = (-0.5, len(categories) - 0.5) if categories else (min(xs), max(xs))
    y0, y1 = min(ys), max(ys)
    if not categories:
        x0, x1 = _padded(x0, x1)
    y0, y1 = _padded(y0, y1)
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (fx(x) - x0) / (x1 - x0) * pw

    def sy(y):
        return top + ph - (y - y0) / (y1 - y0) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    xticks = [(i, c) for i, c in enumerate(categories)] if categories else []
    if not categories:
        xticks = [(10**t if logx else t, f"{10**t if logx else t:.3g}") for t in ticks(x0, x1)]
    for x, label in xticks:
        out.append(f'<text x="{sx(x):.1f}" y="{top + ph + 14}" text-anchor="middle">{escape(label)}</text>')
    for t in ticks(y0, y1):
        out += y_gridline(left, pw, sy(t), t)
    out += axis_titles(left, top, pw, ph, height, xlabel, ylabel)
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        for x, y, tip in pts:
            out.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{colour}" fill-opacity="0.75">'
                f"<title>{escape(tip)}</title></circle>"
            )
        out.append(f'<circle cx="{left + 4 + 100 * i}" cy="{top - 10}" r="4" fill="{colour}"/>')
        out.append(f'<text x="{left + 12 + 100 * i}" y="{top - 6}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _param_chart(info: SweepInfo, study, param: str, k: int) -> str:
    """One objective against one parameter over COMPLETE trials, feasible and infeasible apart."""
    from optuna.distributions import CategoricalDistribution

    trials = [t for t in complete_trials(study) if param in t.params and math.isfinite(t.values[k])]
    if not trials:
        return ""
    values = [t.params[param] for t in trials]
    dists = [t.distributions.get(param) for t in trials]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    categories = None
    if not numeric or any(isinstance(d, CategoricalDistribution) for d in dists):
        choices = next((d.choices for d in dists if isinstance(d, CategoricalDistribution)), ())
        categories = [str(c) for c in dict.fromkeys([*choices, *values])]
    logx = categories is None and min(values) > 0 and max(values) / min(values) > 20
    series: dict[str, list] = {"feasible": [], "infeasible": []}
    for t, v in zip(trials, values):
        point = (categories.index(str(v)) if categories else v, t.values[k], f"trial {t.number}")
        series["infeasible" if is_feasible(t) is False else "feasible"].append(point)
    series = {name: pts for name, pts in series.items() if pts}
    y = info.objectives[k]
    return scatter_chart(
        series, categories=categories, logx=logx, title=f"{y} vs {param}", xlabel=param, ylabel=y
    )


def _param_charts_html(info: SweepInfo, study) -> str:
    params = list(dict.fromkeys(p for t in complete_trials(study) for p in t.params))
    charts = [_param_chart(info, study, p, k) for p in params for k in range(len(info.objectives))]
    return "<h2>Objective versus parameters</h2>" + ("".join(charts) or f"<p>{DASH}</p>")


def _curves_html(info: SweepInfo, sweep_dir: Path, top: list) -> str:
    """The first objective and val/loss over steps for the top trials, one chart per metric."""
    rows = {t.number: _safe_metrics(trial_run_dir(sweep_dir, t)) for t in top}
    charts = []
    for key in (f"objective/{info.objectives[0]}", "val/loss"):
        series = {}
        for number, metrics in rows.items():
            pts = [(float(r["step"]), float(r[key])) for r in metrics if isinstance(r.get(key), (int, float))]
            pts = [p for p in pts if math.isfinite(p[1])]
            if pts:
                series[f"trial {number}"] = pts
        if series:
            charts.append(line_chart(series, title=key, ylabel=key, width=480, height=300))
    heading = f"<h2>Curves of the top {len(top)} trials</h2>"
    return heading + ("".join(charts) or f"<p>{DASH} no metrics.jsonl found</p>")


def _pick_entries(entries: list[dict], step) -> list[dict]:
    """The entry logged at the best step (else the last one), plus the base (step 0) before it."""
    if not entries:
        return []
    chosen = next((e for e in entries if e["step"] == step), entries[-1])
    base = next((e for e in entries if e["step"] == 0), None)
    return [base, chosen] if base is not None and base is not chosen else [chosen]


def _copy_images(folder: Path, entry: dict, number: int, images_dir: Path) -> str:
    figures = []
    captions = entry.get("captions") or []
    for i, name in enumerate(entry.get("files") or []):
        src = folder / Path(str(name)).name
        caption = captions[i] if i < len(captions) and captions[i] is not None else ""
        if not src.is_file():
            figures.append(f"<figure>{DASH}<figcaption>{escape(str(caption))}</figcaption></figure>")
            continue
        dest = images_dir / f"{number:04d}-{sanitise_key(src.name)}"
        images_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        figures.append(
            f'<figure><img src="images/{escape(dest.name, quote=True)}" alt="{escape(str(caption), quote=True)}">'
            f"<figcaption>{escape(str(caption))}</figcaption></figure>"
        )
    return "".join(figures)


def _samples_html(sweep_dir: Path, trial, images_dir: Path) -> str:
    head = "<h2>Samples of the best trial</h2>"
    if trial is None:
        return f"{head}<p>{DASH}</p>"
    run_dir = trial_run_dir(sweep_dir, trial)
    step = _read_json(run_dir / "best.json").get("step", trial.user_attrs.get("best_step"))
    folder = run_dir / "samples" / SAMPLES_KEY
    parts = []
    for entry in _pick_entries(_read_index(folder), step):
        label = "base (step 0)" if entry["step"] == 0 else f"step {entry['step']}"
        parts.append(f"<h3>trial {trial.number}, {escape(label)}</h3>")
        parts.append(_copy_images(folder, entry, trial.number, images_dir) or f"<p>{DASH}</p>")
    return head + ("".join(parts) or f"<p>{DASH} no samples in {escape(str(folder))}</p>")


# ---- the page --------------------------------------------------------------------------------------


def write_report(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of a sweep folder and return the path of its index.html."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out is not None else sweep_dir / REPORT_DIR
    info, study = load_study(sweep_dir)
    best = best_trials(info, study)
    top = ranked_trials(info, study)[:3]
    command = dashboard_command(_mask(info.storage))
    sections = [
        _header_html(info, study),
        _best_html(info, best),
        _trials_table_html(info, study, {t.number for t in best}),
        _failures_html(sweep_dir, study, out),
        _importances_html(info, study),
        _param_charts_html(info, study),
        _curves_html(info, sweep_dir, top),
        _samples_html(sweep_dir, best[0] if best else None, out / "images"),
        f"<h2>Dashboard</h2><p><code>{escape(command)}</code></p>",
    ]
    page = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Sweep {escape(info.name)}</title>'
        f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>\n"
    )
    return atomic_write_bytes(out / "index.html", page.encode("utf-8"))


def report(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """``write_report``, printing where the page went and the dashboard command (for the CLIs)."""
    import optuna

    with warnings.catch_warnings():  # the storage's heartbeat options are noise to a reader
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"optuna|sdexp\.sweep")
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        path = write_report(sweep_dir, out)
    print(f"report: {path}")
    print(f"dashboard: {dashboard_command(read_sweep_info(sweep_dir).storage)}")
    return path


def main(argv: list[str] | None = None) -> int:
    from sdexp.errors import UserError, report_and_exit

    parser = argparse.ArgumentParser(description="Write an HTML report of a sweep folder.")
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: SWEEP_DIR/report")
    args = parser.parse_args(argv)
    try:
        report(args.sweep_dir, args.out)
    except UserError as err:
        report_and_exit(err, "analysis.report: error")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
