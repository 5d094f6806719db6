"""Image grids in the report (``sdexp report --grids``): prompts × trials, prompts × checkpoints.

A grid generates images, which costs minutes on a real model, so the report makes one only when
asked. The grids come from ``sdexp.grid``; when that package is missing or a grid fails, the page
says so in one line and the rest of the report is written as usual.
"""

from __future__ import annotations

import importlib
import os
import shutil
from html import escape
from pathlib import Path

from analysis.page import note

GRIDS_DIR = "grids"
OFF = "Grid: not made (pass --grids to `sdexp report` to generate one; it costs generation time)."


def _make(kind: str, target: Path, prompts: list[str] | None, out_dir: Path) -> Path:
    grid = importlib.import_module("sdexp.grid")

    if kind == "trials":
        return Path(grid.prompts_by_trials(target, prompts or None, out_dir))
    return Path(grid.prompts_by_checkpoints(target, prompts or None, out_dir))


def grid_section(
    kind: str, target: Path, report_dir: Path, *, enabled: bool, prompts: list[str] | None = None
) -> str:
    """The ``<h2>`` section of a prompts × ``kind`` grid ("trials" or "checkpoints") of ``target``."""
    head = f"<h2>Grid: prompts × {kind}</h2>"
    if not enabled:
        return head + note(OFF)
    out_dir = Path(report_dir) / GRIDS_DIR / f"prompt-x-{kind}"
    try:
        path = _make(kind, Path(target), prompts, out_dir)
    except ImportError as err:
        return head + note(f"Grid: not made: the sdexp.grid package is not available ({err}).")
    except Exception as err:  # noqa: BLE001 - a grid is an extra; the report is written without it
        reason = " ".join(str(err).split()) or type(err).__name__
        return head + note(f"Grid: not made: {type(err).__name__}: {reason}")
    if not path.is_file():
        return head + note(f"Grid: not made: {path} was not written.")
    if not path.resolve().is_relative_to(Path(report_dir).resolve()):  # keep the report folder whole
        out_dir.mkdir(parents=True, exist_ok=True)
        path = Path(shutil.copyfile(path, out_dir / "grid.png"))
    src = os.path.relpath(path, report_dir).replace(os.sep, "/")
    return head + f'<img class="grid" src="{escape(src, quote=True)}" alt="prompts × {escape(kind)} grid">'
