"""bench/gpu_check.sh's one JSON and one table, rebuilt from its parts after every section.

    python bench/gpu_report.py PARTS_DIR OUT.json [--table]

``PARTS_DIR`` holds ``phases.jsonl`` (one line a section: status, seconds, exit code, why skipped)
and each finished section's own JSON. Every section of ``SECTIONS`` is in the output, finished or
not (then with its status: skipped, timeout, failed, not run), so a check stopped at its deadline
still leaves one complete file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

# In the order gpu_check.sh runs them (its priority order).
SECTIONS = (
    "build",
    "sd15_eager",
    "sd15_compiled",
    "sdxl_eager",
    "preset_sd15_finetune",
    "preset_sdxl_lora",
    "sweep_lora_tpe",
)
GOALS = {  # issue 17's figures
    "sd15_eager": "sdexp/ref time <= 1.0 at batch 1, 4, 8",
    "sd15_compiled": ">= 200 img/s (reference compiled: 146)",
    "sdxl_eager": "img/s at batch 1 and 4 (reference: 2.0, 7.9)",
    "preset_sd15_finetune": "peak <= 12 GiB",
    "preset_sdxl_lora": "peak <= 12 GiB",
    "sweep_lora_tpe": "16 trials projected (goal for dreambooth_tpe: 20 min)",
}


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect(parts: Path) -> dict:
    phases = {}
    log = parts / "phases.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                phases[entry["name"]] = entry
    meta = _read(parts / "meta.json") or {}
    sections = {}
    for name in SECTIONS:
        phase = phases.get(name, {"status": "not run"})
        result = _read(parts / f"{name}.json")
        if name == "build":
            result = {k: _read(parts / f"build-{k}.json") for k in ("sd15", "sdxl")}
            result = {k: v for k, v in result.items() if v}
        sections[name] = {**phase, "goal": GOALS.get(name), "result": result}
    return {"meta": meta, "sections": sections}


def _rows(section: dict) -> list[dict]:
    result = section.get("result") or {}
    return result.get("rows", []) if isinstance(result, dict) else []


def summary_lines(report: dict) -> list[str]:
    """One line a figure: what the issue asks to see, in the order run."""
    lines = [f"{'section':22s} {'status':9s} {'s':>5s}  figure"]
    for name, section in report["sections"].items():
        status, seconds = section.get("status", "?"), section.get("seconds")
        figures = []
        result = section.get("result")
        if name == "build" and result:
            figures = [f"{k}: {v.get('builds', {}) or 'cached'}" for k, v in result.items()]
        for row in _rows(section):
            ref, ours = row.get("ref") or {}, row.get("sdexp") or {}
            ratio = row.get("time_ratio")
            img = row["batch"] * 1000 / ours["step_ms_median"] if ours.get("step_ms_median") else None
            ref_img = row["batch"] * 1000 / ref["step_ms_median"] if ref.get("step_ms_median") else None
            figures.append(
                f"b{row['batch']}: x{ratio:.2f}" if ratio is not None else f"b{row['batch']}: failed"
            )
            if img is not None:
                figures[-1] += f" sdexp {img:.1f} img/s" + (f" (ref {ref_img:.1f})" if ref_img else "")
        if name.startswith("preset_") and result:
            peak = result.get("peak_gib")
            img = result.get("img_s")
            figures.append(f"peak {peak:.2f} GiB" if peak is not None else "peak n/a (CPU)")
            figures.append(f"{img:.2f} img/s" if img else "img/s n/a")
            figures.append(f"batch {result.get('batch_size')}x{result.get('gradient_accumulation')}")
        if name == "sweep_lora_tpe" and result:
            for trial in result.get("trials", []):
                figures.append(
                    f"trial {trial['trial']}: setup {trial['setup']:.1f} train {trial['train']:.1f} "
                    f"eval {trial['evaluation']:.1f} teardown {trial['teardown']:.1f} s"
                )
            projected = result.get("projected_16_trials_s")
            if projected is not None:
                figures.append(f"16 trials projected {projected / 60:.1f} min")
        text = "; ".join(figures) or (section.get("why") or "-")
        lines.append(f"{name:22s} {status:9s} {seconds if seconds is not None else '-':>5}  {text}")
    return lines


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    table = "--table" in args
    args = [a for a in args if a != "--table"]
    parts, out = Path(args[0]), Path(args[1])
    report = collect(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)
    if table:
        from step import render_table

        for name in ("sd15_eager", "sd15_compiled", "sdxl_eager"):
            rows = _rows(report["sections"][name])
            if rows:
                print(f"\n{name}")
                print(render_table(rows))
        print()
        print("\n".join(summary_lines(report)))
        print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
