"""The page of one run folder (``sdexp report RUN_DIR``): what ran, how it learned, what it made.

Written to RUN_DIR/report/index.html by default, from the run folder alone (config.yaml, run.json,
metrics.jsonl, best.json, samples/); the same shell, charts and image handling as the sweep page.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from analysis.artifacts import (
    copy_entry_images,
    eval_image_folders,
    log_tail,
    read_config,
    read_index,
    read_json,
    safe_metrics,
)
from analysis.galleries import gallery, training_images_html
from analysis.grids import grid_section
from analysis.page import DASH, Page, cell, fmt, key_value_table, note, sortable_table
from analysis.plots import curve_figure, curve_keys, metric_series
from sdexp.tracking.run_folder import RUN_FILE, SAMPLES_DIR

REPORT_DIR = "report"
MAX_STEPS_SHOWN = 12  # evaluation rounds with images on the page; the rest are in samples/
SUMMARY_KEYS = (
    "model.name", "model.family", "model.path", "method.name", "method.rank", "method.targets",
    "method.adapter_type", "data.dir", "data.prompt", "train.lr", "train.steps", "train.batch_size",
    "train.optimizer", "train.scheduler", "train.resolution", "train.mixed_precision", "train.seed",
    "eval.enabled", "eval.clip",
)  # fmt: skip


def _lookup(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _header_html(run_dir: Path, run: dict, config: dict) -> str:
    status = run.get("status", DASH)
    facts = [
        ("folder", str(run_dir)), ("status", str(status)), ("steps", fmt(run.get("steps"))),
        ("stop reason", fmt(run.get("stop_reason"))), ("wall seconds", fmt(run.get("wall_seconds"))),
        ("train seconds", fmt(run.get("train_seconds"))), ("device", fmt(run.get("device"))),
        ("started", fmt(run.get("started_at"))), ("sdexp / torch", f"{fmt((run.get('versions') or {}).get('sdexp'))} / "
                                                               f"{fmt((run.get('versions') or {}).get('torch'))}"),
    ]  # fmt: skip
    settings = [(k, fmt(v)) for k in SUMMARY_KEYS if (v := _lookup(config, k)) is not None]
    full = ""
    try:
        text = (run_dir / "config.yaml").read_text(encoding="utf-8")
        full = f"<details><summary>config.yaml</summary><pre>{escape(text)}</pre></details>"
    except OSError:
        pass
    return (
        f"<h1>Run {escape(run_dir.name)}</h1>{key_value_table(facts)}"
        f"<h2>Config</h2>{key_value_table(settings) if settings else note(DASH + ' no config.yaml')}{full}"
    )


def _failure_html(run_dir: Path, run: dict) -> str:
    if run.get("status") != "failed" and not run.get("error"):
        return ""
    tail = log_tail(run_dir)
    return f"<h2>Failed</h2><p>{escape(fmt(run.get('error')))}</p>" + (
        f"<pre>{escape(tail)}</pre>" if tail else note("no run.log")
    )


def _best_html(best: dict) -> str:
    head = "<h2>Best checkpoint</h2>"
    if not best:
        return head + note(f"{DASH} no best.json: the run scored no checkpoint (yet)")
    objective = best.get("objective") or {}
    facts = [
        ("checkpoint", fmt(best.get("checkpoint"))), ("step", fmt(best.get("step"))),
        ("objective", f"{fmt(objective.get('name'))} ({fmt(objective.get('direction'))})"),
        ("feasible", fmt(best.get("feasible"))), ("beats the base", fmt(best.get("beats_base"))),
    ]  # fmt: skip
    metrics = best.get("metrics") or {}
    base = (best.get("base") or {}).get("metrics") or {}
    rows = [
        ("", f"{cell(k, 'l')}{cell(metrics.get(k))}{cell(base.get(k))}")
        for k in dict.fromkeys([*metrics, *base])
    ]
    scores = sortable_table("scores", ["metric", "best checkpoint", "base (step 0)"], rows, "filter metrics")
    history = best.get("history") or []
    names = list(dict.fromkeys(k for h in history for k in (h.get("objectives") or {})))
    hist_rows = [
        ("best" if h.get("step") == best.get("step") else "",
         cell(h.get("step")) + cell(h.get("checkpoint") or "base", "l")
         + "".join(cell((h.get("objectives") or {}).get(n)) for n in names) + cell(fmt(h.get("feasible"))))
        for h in history
    ]  # fmt: skip
    hist = sortable_table(
        "history", ["step", "checkpoint", *names, "feasible"], hist_rows, "filter checkpoints"
    )
    return (
        head + key_value_table(facts) + "<h3>Scores</h3>" + scores + "<h3>Every scored checkpoint</h3>" + hist
    )


def _curves_html(page: Page, rows: list[dict]) -> str:
    head = "<h2>Curves</h2>"
    objectives = sorted(
        {k for row in rows for k in row if k.startswith("objective/") and not k.endswith("/violation")}
    )
    divs = []
    for i, key in enumerate(curve_keys([rows], objectives)):
        points = metric_series(rows, key)
        if points:
            divs.append(page.plot(curve_figure(key, {"run": points}), f"curve-{i}"))
    return head + (f'<div class="plots">{"".join(divs)}</div>' if divs else note(f"{DASH} no metrics.jsonl"))


def _eval_images_html(run_dir: Path, images_dir: Path) -> str:
    head = "<h2>Evaluation images per checkpoint</h2>"
    parts = []
    for folder in eval_image_folders(run_dir):
        entries = read_index(folder)
        if len(entries) > MAX_STEPS_SHOWN:  # the base, then the latest rounds
            entries = [entries[0], *entries[-(MAX_STEPS_SHOWN - 1) :]]
        for entry in entries:
            label = "base (step 0)" if entry["step"] == 0 else f"step {entry['step']}"
            shown = copy_entry_images(folder, entry, "run", images_dir)
            parts.append(
                f"<h3>{escape(folder.name)}, {escape(label)}</h3>"
                + (gallery(shown) if shown else f"<p>{DASH}</p>")
            )
    grids = sorted((run_dir / SAMPLES_DIR).glob("step-*.png"))[-MAX_STEPS_SHOWN:]
    if grids:
        images_dir.mkdir(parents=True, exist_ok=True)
        shown = []
        for path in grids:
            (images_dir / f"run-samples-{path.name}").write_bytes(path.read_bytes())
            shown.append((f"{images_dir.name}/run-samples-{path.name}", path.stem))
        parts.append("<h3>Sample grids (train.sample_prompts)</h3>" + gallery(shown))
    return head + ("".join(parts) or note(f"{DASH} no images in {run_dir / SAMPLES_DIR}"))


def write_run_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    grids: bool = False,
    grid_prompts: list[str] | None = None,
) -> Path:
    """Write the page of a run folder and return the path of its index.html."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / REPORT_DIR
    run, config = read_json(run_dir / RUN_FILE), read_config(run_dir)
    page = Page(f"Run {run_dir.name}")
    page.add(_header_html(run_dir, run, config))
    page.add(_failure_html(run_dir, run))
    page.add(_best_html(read_json(run_dir / "best.json")))
    page.add(_curves_html(page, safe_metrics(run_dir)))
    page.add(_eval_images_html(run_dir, out / "images"))
    page.add("<h2>Training data</h2>" + training_images_html(run_dir, "run", out / "images"))
    page.add(grid_section("checkpoints", run_dir, out, enabled=grids, prompts=grid_prompts))
    return page.write(out)
