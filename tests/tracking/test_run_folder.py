"""Run folder files: metrics.jsonl, samples/, summary.json, run.json and the atomic JSON writer."""

from __future__ import annotations

import json
import math
import platform

import pytest
import torch
from PIL import Image

from sdexp.tracking import (
    Logger,
    MultiLogger,
    RunFolderLogger,
    collect_versions,
    read_metrics,
    write_json_atomic,
    write_run_json,
)


def _strict_json(line: str) -> dict:
    def reject(token):
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(line, parse_constant=reject)


def test_metrics_jsonl_one_strict_json_object_per_call(tmp_path):
    log = RunFolderLogger(tmp_path / "run")
    log.log_metrics({"loss": 0.5, "lr": 1e-4}, step=0)
    log.log_metrics({"loss": torch.tensor(0.25), "grad_norm": float("nan")}, step=10)
    log.log_metrics({"loss": float("inf"), "images_per_s": 3}, step=20)

    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    raw = [_strict_json(line) for line in lines]
    assert [r["step"] for r in raw] == [0, 10, 20]
    assert all(isinstance(r["time"], float) and r["time"] >= 0 for r in raw)
    assert raw[0]["time"] <= raw[1]["time"] <= raw[2]["time"]
    assert raw[0]["loss"] == 0.5 and raw[0]["lr"] == 1e-4
    assert raw[1]["loss"] == 0.25 and raw[1]["grad_norm"] == "nan"
    assert raw[2]["images_per_s"] == 3 and raw[2]["loss"] == "inf"

    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 10, 20]
    assert rows[1]["loss"] == 0.25 and math.isnan(rows[1]["grad_norm"])
    assert rows[2]["loss"] == math.inf
    assert set(rows[0]) == {"step", "time", "loss", "lr"}


def test_read_metrics_skips_torn_last_line_but_not_corruption_inside(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "time": 0.1, "loss": 1.0}\n{"step": 1, "ti')
    assert read_metrics(tmp_path) == [{"step": 0, "time": 0.1, "loss": 1.0}]
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "ti\n{"step": 1, "time": 0.1}\n')
    with pytest.raises(json.JSONDecodeError):
        read_metrics(tmp_path)
    assert read_metrics(tmp_path / "missing") == []


def test_write_json_atomic_overwrites_and_leaves_no_tmp_files(tmp_path):
    target = tmp_path / "sub" / "state.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"b": [1, 2], "path": tmp_path})
    assert json.loads(target.read_text()) == {"b": [1, 2], "path": str(tmp_path)}
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_write_json_atomic_failure_keeps_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "state.json"
    write_json_atomic(target, {"ok": True})
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError):
        write_json_atomic(target, circular)
    assert json.loads(target.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_run_json_merges_into_existing(tmp_path):
    write_run_json(tmp_path, status="running", config={"lr": 1e-4})
    write_run_json(tmp_path, status="finished", exit_code=0)
    assert json.loads((tmp_path / "run.json").read_text()) == {
        "status": "finished",
        "config": {"lr": 1e-4},
        "exit_code": 0,
    }


def test_collect_versions_reports_installed_stack():
    info = collect_versions()
    assert info["python"] == platform.python_version()
    assert info["torch"] == torch.__version__
    assert info["sdexp"]
    for key in ("diffusers", "transformers", "peft", "accelerate", "hydra-core", "wandb", "platform"):
        assert key in info
    assert info["cuda_available"] == torch.cuda.is_available()
    assert (info["cuda_device"] is not None) == info["cuda_available"]
    json.dumps(info)


def test_images_summary_and_finish(tmp_path):
    run = tmp_path / "run"
    write_run_json(run, status="running")
    log = RunFolderLogger(run)
    images = [Image.new("RGB", (16, 8), (255, 0, 0)), Image.new("RGB", (16, 8), (0, 0, 255))]
    log.log_images("val/samples", images, step=42, captions=["a red", "a blue"])
    folder = run / "samples" / "val_samples"
    assert sorted(p.name for p in folder.glob("*.png")) == ["step-000042-0.png", "step-000042-1.png"]
    with Image.open(folder / "step-000042-1.png") as im:
        assert im.size == (16, 8) and im.convert("RGB").getpixel((0, 0)) == (0, 0, 255)
    index = [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]
    assert index == [
        {
            "step": 42,
            "key": "val/samples",
            "files": ["step-000042-0.png", "step-000042-1.png"],
            "captions": ["a red", "a blue"],
        }
    ]
    with pytest.raises(ValueError, match="captions"):
        log.log_images("x", images, step=1, captions=["only one"])

    log.log_summary({"best_clip": 0.3})
    log.log_summary({"final_loss": torch.tensor(0.125)})
    assert json.loads((run / "summary.json").read_text()) == {"best_clip": 0.3, "final_loss": 0.125}

    log.finish(exit_code=3)
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "running" and meta["exit_code"] == 3 and "ended_at" in meta


class _Recorder(Logger):
    def __init__(self, fail: bool = False):
        self.calls: list[tuple] = []
        self.fail = fail

    def log_metrics(self, metrics, step):
        self.calls.append(("metrics", metrics, step))
        if self.fail:
            raise RuntimeError("backend down")

    def finish(self, exit_code=0):
        self.calls.append(("finish", exit_code))


def test_multilogger_fans_out_and_reraises_after_all_ran(tmp_path):
    bad, good = _Recorder(fail=True), _Recorder()
    multi = MultiLogger([bad, good, RunFolderLogger(tmp_path)])
    with pytest.raises(RuntimeError, match="backend down"):
        multi.log_metrics({"loss": 1.0}, step=5)
    assert good.calls == [("metrics", {"loss": 1.0}, 5)]
    assert read_metrics(tmp_path)[0]["loss"] == 1.0
    with pytest.raises(RuntimeError):
        with multi:
            raise RuntimeError("training crashed")
    assert good.calls[-1] == ("finish", 1) and bad.calls[-1] == ("finish", 1)
    assert json.loads((tmp_path / "run.json").read_text())["exit_code"] == 1
