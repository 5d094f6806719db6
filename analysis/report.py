"""An HTML report of a sweep, built only from its Optuna study and its trials' run folders.

sdexp report SWEEP_OR_RUN [--out DIR] [--grids]        # writes DIR/index.html (default SWEEP/report/)
python -m analysis.report SWEEP_OR_RUN [--out DIR]     # the same, from a checkout

One page that works offline: Optuna's plots and training curves as plotly charts (plotly.js inline,
once), a trial table that sorts and filters, training images beside generated ones, failed trials
with their errors and last log lines. Images are copied into DIR/images/ so the folder can be moved
or shared on its own. Anything missing (a run folder, best.json, samples) shows as "—". A run folder
gets the same kind of page from analysis/run_report.py.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import warnings
from html import escape
from pathlib import Path

from analysis.artifacts import (
    copy_entry_images,
    eval_image_folders,
    log_tail,
    read_index,
    read_json,
    safe_metrics,
)
from analysis.galleries import gallery, pick_entries, training_images_html
from analysis.grids import grid_section
from analysis.page import DASH, Page, cell, fmt, key_value_table, note, sortable_table
from analysis.plots import KEY_METRICS, curve_figure, curve_keys, importances, metric_series, study_figures
from analysis.run_report import write_run_report
from sdexp.errors import UserError
from sdexp.sweep.best import best_trials, failed_rows, is_feasible, ranked_trials, trial_run_dir
from sdexp.sweep.layout import REPORT_DIR, SWEEP_FILE, SweepInfo, load_study, read_sweep_info
from sdexp.tracking.run_folder import METRICS_FILE, RUN_FILE

__all__ = ["best_trials", "dashboard_command", "importances", "main", "report", "write_report"]

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
TOP_TRIALS = 3


def _mask(url: str) -> str:
    """The storage URL without its password, fit to show in a page that may be shared."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


def dashboard_command(storage: str) -> str:
    """The shell command that opens the study in optuna-dashboard (a journal file is given by path)."""
    target = storage.removeprefix("journal:") if storage.startswith("journal:") else storage
    return f"optuna-dashboard {shlex.quote(target)}"


def _duration(trial) -> float | None:
    """Wall seconds from start to finish, as Optuna timed them; None while unfinished."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)


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
    return f"<h1>Sweep {escape(info.name)}</h1>{key_value_table(rows)}"


def _best_html(info: SweepInfo, best: list) -> str:
    title = "Best trial" if len(info.directions) == 1 else f"Pareto set ({len(best)} trials)"
    if not best:
        return f"<h2>{title}</h2><p>{DASH} no trial has completed</p>"
    items = []
    for t in best:
        values = ", ".join(f"{o} = {fmt(v)}" for o, v in zip(info.objectives, t.values))
        params = ", ".join(f"{k} = {fmt(v)}" for k, v in t.params.items())
        ckpt = t.user_attrs.get("best_checkpoint") or DASH
        items.append(
            f"<li>trial {t.number}: {escape(values)}; checkpoint {escape(ckpt)}; {escape(params)}</li>"
        )
    return f"<h2>{title}</h2><ul>{''.join(items)}</ul>"


def _shown_values(info: SweepInfo, trial) -> list:
    """The best checkpoint's objectives; a pruned trial's Optuna value is the pruner's view of it
    (an infeasible checkpoint reads -1e9), not a score to show."""
    scored = trial.user_attrs.get("objectives") or {}
    if scored:
        return [scored.get(o) for o in info.objectives]
    return list(trial.values) if trial.values else [None] * len(info.objectives)


def _trials_table_html(info: SweepInfo, study, best_numbers: set[int]) -> str:
    trials = study.get_trials(deepcopy=False)
    params = list(dict.fromkeys(p for t in trials for p in t.params))
    metrics = [
        m for m in (*KEY_METRICS, "val/loss") if any(m in (t.user_attrs.get("metrics") or {}) for t in trials)
    ]
    heads = ["#", "state", *params, *info.objectives, "feasible", "best checkpoint", *metrics]
    heads += ["seconds", "pruned step", "error"]
    rows = []
    for t in trials:
        best = t.number in best_numbers
        feasible = is_feasible(t)
        error = t.user_attrs.get("error")
        short = None if error is None else (error if len(error) <= 120 else error[:117] + "...")
        cells = [f'<td data-v="{t.number}">{"★ " if best else ""}{t.number}</td>', cell(t.state.name, "l")]
        cells += [cell(t.params.get(p)) for p in params] + [cell(v) for v in _shown_values(info, t)]
        cells.append(cell(None if feasible is None else ("yes" if feasible else "no")))
        cells.append(cell(t.user_attrs.get("best_checkpoint"), "l"))
        cells += [cell((t.user_attrs.get("metrics") or {}).get(m)) for m in metrics]
        cells += [cell(_duration(t)), cell(t.user_attrs.get("pruned_step")), cell(short, "l", error)]
        rows.append(("best" if best else "fail" if t.state.name == "FAIL" else "", "".join(cells)))
    table = sortable_table("trials", heads, rows, "filter trials: e.g. COMPLETE, or 0.001")
    return (
        "<h2>Trials</h2><p>★ marks the best trial (the Pareto set with several objectives). "
        "Click a header to sort; type to filter.</p>" + table
    )


def _failures_html(sweep_dir: Path, study, out: Path) -> str:
    """Each failed trial's error in full and a link to its run.log, then the log's last lines."""
    failed = failed_rows(sweep_dir, study)
    if not failed:
        return ""
    rows, tails = [], []
    for f in failed:
        log = Path(f["log"])
        shown = escape(os.path.relpath(log, sweep_dir))
        link = (
            f'<a href="{escape(os.path.relpath(log, out), quote=True)}">{shown}</a>'
            if log.is_file()
            else f"{shown} (missing)"
        )
        params = ", ".join(f"{k} = {fmt(v)}" for k, v in f["params"].items())
        rows.append(
            f'<tr><td>{f["trial"]}</td><td class="l">{escape(fmt(f["error"]))}</td>'
            f'<td class="l">{escape(params)}</td><td class="l">{link}</td></tr>'
        )
        tail = log_tail(log.parent)
        if tail:
            tails.append(f"<h3>trial {f['trial']}: the end of {shown}</h3><pre>{escape(tail)}</pre>")
    head = '<tr><th>#</th><th class="l">error</th><th class="l">parameters</th><th class="l">log</th></tr>'
    return f"<h2>Failed trials ({len(failed)})</h2><table>{head}{''.join(rows)}</table>{''.join(tails)}"


def _plots_html(page: Page, info: SweepInfo, study, best: list) -> str:
    divs, notes = [], []
    for i, (_title, fig) in enumerate(study_figures(info, study, best)):
        if isinstance(fig, str):
            notes.append(note(fig))
        else:
            divs.append(page.plot(fig, f"study-plot-{i}"))
    return "<h2>Study plots</h2>" + "".join(notes) + f'<div class="plots">{"".join(divs)}</div>'


def _curves_html(page: Page, info: SweepInfo, sweep_dir: Path, top: list) -> str:
    """Losses, the first objective and key eval metrics over steps, one line per top trial."""
    heading = f"<h2>Curves of the top {len(top)} trials</h2>"
    runs = {f"trial {t.number}": safe_metrics(trial_run_dir(sweep_dir, t)) for t in top}
    divs = []
    for i, key in enumerate(curve_keys(runs.values(), [f"objective/{info.objectives[0]}"])):
        series = {label: pts for label, rows in runs.items() if (pts := metric_series(rows, key))}
        if series:
            divs.append(page.plot(curve_figure(key, series), f"curve-{i}"))
    return heading + (
        f'<div class="plots">{"".join(divs)}</div>' if divs else f"<p>{DASH} no metrics.jsonl found</p>"
    )


def _images_html(sweep_dir: Path, trial, images_dir: Path) -> str:
    """Training images beside the generated ones: the base's (step 0) and the best checkpoint's."""
    head = "<h2>Images of the best trial</h2>"
    if trial is None:
        return f"{head}<p>{DASH}</p>"
    run_dir = trial_run_dir(sweep_dir, trial)
    step = read_json(run_dir / "best.json").get("step", trial.user_attrs.get("best_step"))
    generated = []
    for folder in eval_image_folders(run_dir):
        for entry in pick_entries(read_index(folder), step):
            label = "base (step 0)" if entry["step"] == 0 else f"step {entry['step']}"
            shown = copy_entry_images(folder, entry, f"{trial.number:04d}", images_dir)
            generated.append(f"<h3>trial {trial.number}, {escape(folder.name)}, {escape(label)}</h3>")
            generated.append(gallery(shown) if shown else f"<p>{DASH}</p>")
    if not generated:
        generated.append(f"<p>{DASH} no generated images in {escape(str(run_dir / 'samples'))}</p>")
    training = training_images_html(run_dir, f"{trial.number:04d}", images_dir)
    return f'{head}<div class="side"><div>{training}</div><div>{"".join(generated)}</div></div>'


# ---- the page --------------------------------------------------------------------------------------


def write_report(
    sweep_dir: str | Path,
    out: str | Path | None = None,
    *,
    grids: bool = False,
    grid_prompts: list[str] | None = None,
) -> Path:
    """Write the report of a sweep folder and return the path of its index.html."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out is not None else sweep_dir / REPORT_DIR
    info, study = load_study(sweep_dir)
    best = best_trials(info, study)
    top = ranked_trials(info, study)[:TOP_TRIALS]
    page = Page(f"Sweep {info.name}")
    page.add(_header_html(info, study))
    page.add(_best_html(info, best))
    page.add(_trials_table_html(info, study, {t.number for t in best}))
    page.add(_failures_html(sweep_dir, study, out))
    page.add(_plots_html(page, info, study, best))
    page.add(_curves_html(page, info, sweep_dir, top))
    page.add(_images_html(sweep_dir, best[0] if best else None, out / "images"))
    page.add(grid_section("trials", sweep_dir, out, enabled=grids, prompts=grid_prompts))
    command = dashboard_command(_mask(info.storage))
    page.add(
        f"<h2>Dashboard</h2><p><code>{escape(command)}</code> (or <code>sdexp dashboard {escape(shlex.quote(str(sweep_dir)))}</code>)</p>"
    )
    return page.write(out)


def folder_kind(path: Path) -> str:
    """Which page a folder gets: "sweep" (sweep.json) or "run" (run.json or metrics.jsonl)."""
    if (path / SWEEP_FILE).is_file():
        return "sweep"
    if (path / RUN_FILE).is_file() or (path / METRICS_FILE).is_file():
        return "run"
    raise UserError(
        f"{path}: neither a sweep folder (no {SWEEP_FILE}) nor a run folder (no {RUN_FILE} or {METRICS_FILE}); "
        "pass a folder `sdexp sweep` or `python run.py` wrote"
    )


def report(
    path: str | Path,
    out: str | Path | None = None,
    *,
    grids: bool = False,
    grid_prompts: list[str] | None = None,
) -> Path:
    """Write the page of a sweep or a run folder, printing where it went (for the CLIs)."""
    import optuna

    path = Path(path)
    if folder_kind(path) == "run":
        written = write_run_report(path, out, grids=grids, grid_prompts=grid_prompts)
        print(f"report: {written}")
        return written
    with warnings.catch_warnings():  # the storage's heartbeat options are noise to a reader
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"optuna|sdexp\.sweep")
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        written = write_report(path, out, grids=grids, grid_prompts=grid_prompts)
    print(f"report: {written}")
    print(f"dashboard: {dashboard_command(read_sweep_info(path).storage)}")
    return written


def main(argv: list[str] | None = None) -> int:
    from sdexp.errors import report_and_exit

    parser = argparse.ArgumentParser(description="Write an HTML report of a sweep or run folder.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: FOLDER/report")
    parser.add_argument("--grids", action="store_true", help="generate the prompts × trials/checkpoints grid")
    parser.add_argument(
        "--grid-prompt", action="append", default=None, metavar="TEXT", help="a grid row (repeat)"
    )
    args = parser.parse_args(argv)
    try:
        report(args.folder, args.out, grids=args.grids, grid_prompts=args.grid_prompt)
    except UserError as err:
        report_and_exit(err, "analysis.report: error")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
