"""TensorBoard event files under ``RUN/tensorboard/``: the run's scalars, images, config and HParams.

Everything metrics.jsonl gets goes here too, key for key and step for step, so TensorBoard and the
run folder never disagree. At the end, the HParams plugin's summaries (this run's hyperparameters
against its best checkpoint's results, from best.json) are written into the run's own event files,
not into a sub-folder as ``SummaryWriter.add_hparams`` would: ``tensorboard --logdir SWEEP/trials``
then shows one HParams session per trial, comparable side by side.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sdexp.tracking.base import Logger
from sdexp.tracking.hparams import best_results, read_best
from sdexp.tracking.run_folder import RUN_FILE

if TYPE_CHECKING:
    from PIL.Image import Image

TENSORBOARD_DIR = "tensorboard"
CONFIG_TAG = "config"
FLUSH_SECONDS = 15  # someone may be watching the run live: TensorBoard sees new points this soon


def _number(value: Any) -> float | None:
    """A scalar as a float (tensors and numpy scalars included), or None for anything else."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def resumed_after(run_dir: Path) -> int | None:
    """The step of the checkpoint this run was last resumed from (run.json's ``resumes``), or None.

    The killed run's event files still hold its later steps; the resumed writer purges them (as the
    rewind did from metrics.jsonl), so TensorBoard shows each step once."""
    path = run_dir / RUN_FILE  # fit_and_record lists the resume there before the loggers start
    resumes = json.loads(path.read_text(encoding="utf-8")).get("resumes") if path.is_file() else None
    match = re.fullmatch(r"step-(\d+)", str(resumes[-1].get("from"))) if resumes else None
    return int(match.group(1)) if match else None


def _caption_text(captions: list[str], per_row: int) -> str:
    """Which prompt made which image of the grid (row by row, ``per_row`` a row), as Markdown."""
    cells = [c.replace("|", "\\|") for c in captions]
    rows = "\n".join(f"| {i // per_row + 1} | {i % per_row + 1} | {c} |" for i, c in enumerate(cells))
    return "| row | column | caption |\n|---|---|---|\n" + rows


def _mark_failed(session_end: Any) -> None:
    """Set the status of torch's session-end summary (always STATUS_SUCCESS) to STATUS_FAILURE."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    metadata = session_end.value[0].metadata
    data = plugin_data_pb2.HParamsPluginData.FromString(metadata.plugin_data.content)
    data.session_end_info.status = api_pb2.STATUS_FAILURE
    metadata.plugin_data.content = data.SerializeToString()


class TensorBoardLogger(Logger):
    """A ``SummaryWriter`` on ``RUN/tensorboard``; ``hparams`` are the run's hyperparameters (flat
    dotted keys, see ``sdexp.tracking.hparams``), written with the best results at ``finish``."""

    GRID_COLUMNS = 8  # torch.utils.tensorboard's add_images puts at most 8 images in a row

    def __init__(self, *, run_dir: Path | str, config: dict, hparams: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.log_dir = self.run_dir / TENSORBOARD_DIR
        self.hparams = dict(hparams)
        after = resumed_after(self.run_dir)
        self.writer: Any = SummaryWriter(
            log_dir=str(self.log_dir),
            flush_secs=FLUSH_SECONDS,
            purge_step=None if after is None else after + 1,
        )
        plain = json.loads(json.dumps(config, default=str))  # tuples, paths: as YAML can write them
        text = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)
        self.writer.add_text(CONFIG_TAG, f"```yaml\n{text}```", global_step=0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            number = _number(value)
            if number is not None:
                self.writer.add_scalar(str(key), number, global_step=int(step))

    def log_images(self, key: str, images: list[Image], step: int, captions: list[str] | None = None) -> None:
        if self.writer is None or not images:
            return
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"log_images({key!r}): {len(images)} images but {len(captions)} captions")
        import numpy as np

        arrays = [np.asarray(image.convert("RGB")) for image in images]
        if len({a.shape for a in arrays}) == 1:  # one grid per step: a slider walks through the run
            self.writer.add_images(key, np.stack(arrays), global_step=int(step), dataformats="NHWC")
            per_row = min(len(arrays), self.GRID_COLUMNS)
        else:
            for i, array in enumerate(arrays):
                self.writer.add_image(f"{key}/{i}", array, global_step=int(step), dataformats="HWC")
            per_row = 1
        if captions is not None:
            self.writer.add_text(f"{key}/captions", _caption_text(captions, per_row), global_step=int(step))

    def write_hparams(self, results: dict[str, float], status_ok: bool) -> None:
        """The HParams plugin's experiment, session start and session end, in this run's own events;
        ``results`` (metric tag -> value) are also scalars, which is where the plugin reads them."""
        from torch.utils.tensorboard.summary import hparams

        step = int(results.get("best/step", 0))
        experiment, session_start, session_end = hparams(self.hparams, results)
        if not status_ok:
            _mark_failed(session_end)
        file_writer = self.writer.file_writer
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary, global_step=step)
        for tag, value in results.items():
            if math.isfinite(value):
                self.writer.add_scalar(tag, value, global_step=step)

    def finish(self, exit_code: int = 0) -> None:
        if self.writer is None:
            return
        writer = self.writer
        try:
            self.write_hparams(best_results(read_best(self.run_dir)), status_ok=exit_code == 0)
        finally:
            self.writer = None
            writer.close()
