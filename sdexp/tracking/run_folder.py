"""The run folder's own record: metrics.jsonl, samples/, summary.json and run.json, readable without W&B."""

from __future__ import annotations

import json
import math
import platform
import re
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdexp.atomic import write_json_atomic
from sdexp.tracking.base import Logger

if TYPE_CHECKING:
    from PIL.Image import Image

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"
SAMPLES_DIR = "samples"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_VERSIONED = (
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "accelerate",
    "hydra-core",
    "wandb",
    "sdexp",
)


def _scalar(value: Any) -> Any:
    """Turn tensors / numpy scalars into plain numbers and non-finite floats into strict-JSON strings."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _unscalar(value: Any) -> Any:
    return _NON_FINITE[value] if isinstance(value, str) and value in _NON_FINITE else value


def sanitise_key(key: str) -> str:
    """Make a metric/image key usable as one folder name ("val/samples" -> "val_samples")."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")
    return name if name not in ("", ".", "..") else "_"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def read_metrics(run_dir: Path | str) -> list[dict]:
    """Parse metrics.jsonl; a torn last line (crash mid-write) is skipped, "nan"/"inf" become floats."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
        rows.append({k: _unscalar(v) for k, v in row.items()})
    return rows


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect_versions() -> dict:
    """Versions and hardware that decide whether a result can be reproduced."""
    info: dict[str, Any] = {"python": platform.python_version()}
    for dist in _VERSIONED:
        info[dist] = _version(dist)
    if info["sdexp"] is None:
        import sdexp

        info["sdexp"] = getattr(sdexp, "__version__", None)
    info["platform"] = platform.platform()
    info["cuda_available"] = False
    info["cuda_device"] = None
    info["cuda_version"] = None
    try:
        import torch

        info["torch"] = torch.__version__  # keeps the local build tag (+cu130) that metadata drops
        info["cuda_available"] = bool(torch.cuda.is_available())
        info["cuda_version"] = torch.version.cuda
        if info["cuda_available"]:
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except Exception as err:  # noqa: BLE001 - a broken driver must not stop a run from starting
        info["cuda_error"] = f"{type(err).__name__}: {err}"
    return info


def write_run_json(run_dir: Path | str, **fields: Any) -> None:
    """Merge ``fields`` into <run_dir>/run.json (shallow, newer wins), written atomically."""
    path = Path(run_dir) / RUN_FILE
    write_json_atomic(path, {**_read_json(path), **fields})


class RunFolderLogger(Logger):
    """Appends one JSON line per log call to metrics.jsonl and saves images under samples/<key>/."""

    def __init__(self, run_dir: Path | str):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        self._start = time.monotonic()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": int(step), "time": round(time.monotonic() - self._start, 3)}
        row.update({str(k): _scalar(v) for k, v in metrics.items()})
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")

    def log_images(self, key: str, images: list[Image], step: int, captions: list[str] | None = None) -> None:
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"log_images({key!r}): {len(images)} images but {len(captions)} captions")
        folder = self.run_dir / SAMPLES_DIR / sanitise_key(key)
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for i, image in enumerate(images):
            name = f"step-{int(step):06d}-{i}.png"
            image.save(folder / name)
            files.append(name)
        entry = {"step": int(step), "key": key, "files": files, "captions": captions}
        with (folder / "index.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def log_summary(self, values: dict[str, Any]) -> None:
        path = self.run_dir / SUMMARY_FILE
        write_json_atomic(path, {**_read_json(path), **{k: _scalar(v) for k, v in values.items()}})

    def finish(self, exit_code: int = 0) -> None:
        write_run_json(
            self.run_dir,
            exit_code=int(exit_code),
            ended_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
