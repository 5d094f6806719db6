"""bench/gpu_check.sh in its CPU dry run: every section runs on the tiny models and the one JSON holds
each of them with its figures, so the script a GPU session gets is known to work end to end. Also
the report's own rule: a section that never ran is still in the file, with its status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))


@pytest.mark.slow
def test_dry_run_writes_every_section(tmp_path):
    from gpu_report import SECTIONS

    env = {**os.environ, "GPU_CHECK_DRY": "1", "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    log = proc.stdout[-4000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "results-gpu.json").read_text())
    assert report["meta"]["dry_run"] is True
    sections = report["sections"]
    assert list(sections) == list(SECTIONS)
    assert {name: s["status"] for name, s in sections.items()} == dict.fromkeys(SECTIONS, "ok"), log
    for name in ("sd15_eager", "sd15_compiled", "sdxl_eager"):
        rows = sections[name]["result"]["rows"]
        assert rows and all(r["time_ratio"] > 0 and r["same_training"] for r in rows), name
    for name, method in (("preset_sd15_finetune", "finetune"), ("preset_sdxl_lora", "lora")):
        preset = sections[name]["result"]
        assert preset["method"] == method and preset["preset"] == "vram12" and preset["img_s"] > 0
        assert preset["gradient_checkpointing"] and preset["overrides"] == ["train.optimizer=adamw"]
    sweep = sections["sweep_lora_tpe"]["result"]
    assert sweep["failed"] == 0 and len(sweep["trials"]) == 2 and sweep["projected_16_trials_s"] > 0
    for trial in sweep["trials"]:
        assert all(trial[k] >= 0 for k in ("setup", "train", "evaluation", "teardown"))
    assert "16 trials projected" in proc.stdout and "sd15_eager" in proc.stdout  # the one table


def test_a_section_that_never_ran_is_reported(tmp_path):
    from gpu_report import SECTIONS, collect

    (tmp_path / "phases.jsonl").write_text(
        json.dumps({"name": "sd15_eager", "status": "timeout", "seconds": 90, "rc": 124, "why": ""}) + "\n"
    )
    report = collect(tmp_path)
    assert list(report["sections"]) == list(SECTIONS)
    assert report["sections"]["sd15_eager"]["status"] == "timeout"
    assert report["sections"]["sweep_lora_tpe"]["status"] == "not run"
