"""A grid from two axes to its folder: cells generated, grid.png drawn, grid.json beside them.

    OUT/grid.png            the labelled grid
    OUT/grid.json           the axes, the layout (where each cell sits in grid.png) and, per cell:
                            row/col labels, file, A1111 parameters, seed, model, adapter, scale, spec
    OUT/cells/rXX_cYY.png   each cell alone, with its A1111 ``parameters`` text (remade by sdexp generate)

The folder is built beside OUT in a hidden staging folder and swapped in whole, so a grid is never
half old and half new; an OUT that holds anything but an earlier grid is refused, not overwritten.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from sdexp.errors import UserError
from sdexp.grid.axes import Axis, make_axis
from sdexp.grid.cells import Cell, generate_cells
from sdexp.grid.sources import Target, resolve_target
from sdexp.grid.spec import GenerationSpec

GRID_IMAGE = "grid.png"
GRID_JSON = "grid.json"
CELLS_DIR = "cells"
SETTINGS = ("seed", "steps", "guidance", "scheduler", "negative", "width", "height")


def cell_file(row: int, col: int) -> str:
    return f"{CELLS_DIR}/r{row:02d}_c{col:02d}.png"


def plan_cells(base: GenerationSpec, rows: Axis, cols: Axis) -> list[Cell]:
    """One cell per (row value, column value): the base edited by the row's value, then the column's."""
    row_fields = {k for v in rows.values for k, _ in v.edit}
    col_fields = {k for v in cols.values for k, _ in v.edit}
    shared = sorted(row_fields & col_fields)
    if shared:
        raise UserError(
            f"the row axis ({rows.key}) and the column axis ({cols.key}) both set {', '.join(shared)}; "
            "choose two axes that change different things"
        )
    cells = [
        Cell(r, c, col_value.apply(row_value.apply(base)))
        for r, row_value in enumerate(rows.values)
        for c, col_value in enumerate(cols.values)
    ]
    if "scale" in (rows.key, cols.key) and not any(cell.spec.lora for cell in cells):
        raise UserError(
            "scale: no cell has a LoRA to scale; point the grid at a run, a checkpoint or a LoRA file"
        )
    return cells


def check_out_dir(out_dir: Path) -> None:
    if out_dir.is_file() or (
        out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / GRID_JSON).is_file()
    ):
        raise UserError(
            f"--out: {out_dir} exists and is not an earlier grid (no {GRID_JSON}); choose a new or empty folder"
        )


def _swap_in(staging: Path, out_dir: Path) -> None:
    """``staging`` becomes ``out_dir``; an earlier grid there is moved aside first, then removed."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-old-", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _cell_record(cell: Cell, rows: Axis, cols: Axis, box: tuple[int, int, int, int]) -> dict:
    s = cell.spec
    return {
        "row": cell.row,
        "col": cell.col,
        "row_label": rows.values[cell.row].label,
        "col_label": cols.values[cell.col].label,
        "file": cell_file(cell.row, cell.col),
        "box": list(box),
        "parameters": cell.parameters,
        "seed": s.seed,
        "prompt": s.prompt,
        "model": s.model,
        "model_name": cell.model_name,
        "adapter": s.lora,
        "adapter_name": cell.adapter_name,
        "embedding": s.embedding,
        "scale": s.scale if s.lora else None,
        "spec": asdict(s),
    }


def write_grid_folder(cells: list[Cell], rows: Axis, cols: Axis, out_dir: Path) -> Path:
    """grid.png, grid.json and cells/ for generated ``cells``, swapped into ``out_dir``."""
    from sdexp.atomic import atomic_write_bytes, write_json_atomic
    from sdexp.grid.render import render_grid
    from sdexp.png_info import write_png

    images = [[None] * len(cols.values) for _ in rows.values]
    for cell in cells:
        images[cell.row][cell.col] = cell.image
    canvas, layout = render_grid(images, rows.labels, cols.labels, rows.key, cols.key)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-new-", dir=out_dir.parent))
    try:
        for cell in cells:
            write_png(cell.image, staging / cell_file(cell.row, cell.col), cell.parameters)
        buffer = _png_bytes(canvas)
        atomic_write_bytes(staging / GRID_IMAGE, buffer)
        write_json_atomic(
            staging / GRID_JSON,
            {
                "image": GRID_IMAGE,
                "rows": {"key": rows.key, "labels": rows.labels},
                "columns": {"key": cols.key, "labels": cols.labels},
                "layout": layout.as_dict(),
                "cells": [_cell_record(c, rows, cols, layout.box(c.row, c.col, c.image.size)) for c in cells],
            },
        )
        _swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / GRID_IMAGE


def _png_bytes(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_grid(
    base: GenerationSpec,
    rows: Axis,
    cols: Axis,
    out_dir: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    notify: Callable[[str], None] = print,
) -> Path:
    """Generate rows × columns cells from ``base`` and write the grid folder; returns grid.png."""
    out_dir = Path(out_dir).expanduser()
    if rows.key == cols.key:
        raise UserError(f"rows and columns are both {rows.key!r}; choose two different axes")
    cells = plan_cells(base, rows, cols)
    check_out_dir(out_dir)
    notify(f"grid: {len(rows.values)} {rows.key} x {len(cols.values)} {cols.key} = {len(cells)} images")
    generate_cells(cells, device=device, dtype=dtype, notify=notify)
    return write_grid_folder(cells, rows, cols, out_dir)


def settings_edit(**settings) -> dict:
    """The sampling settings given (not None) as a GenerationSpec edit."""
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise TypeError(f"unknown grid settings: {', '.join(sorted(unknown))} (known: {', '.join(SETTINGS)})")
    return {k: v for k, v in settings.items() if v is not None}


def prompt_axis(prompts: list[str] | None, target: Target) -> Axis:
    """The prompts given, else the target's own (eval.prompts, train.sample_prompts, data.prompt)."""
    prompts = list(prompts or target.prompts)
    if not prompts:
        raise UserError(
            f"--prompts: {target.path} names no prompts (no eval.prompts, train.sample_prompts or data.prompt); "
            'pass them: --prompts "a photo of sks dog" "sks dog in the snow"'
        )
    return make_axis("prompt", prompts, target, "--prompts")


def shortcut_grid(
    target_path: str | Path,
    prompts: list[str] | None,
    out_dir: str | Path | None,
    *,
    column_key: str,
    column_values: list[str] | None,
    model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    notify: Callable[[str], None] = print,
    **settings,
) -> Path:
    """Prompts (rows) by ``column_key`` (checkpoint, trial, scale) for a run, sweep or LoRA file."""
    target = resolve_target(target_path, model)
    base = target.base.edited(settings_edit(**settings))
    rows = prompt_axis(prompts, target)
    cols = make_axis(column_key, list(column_values or []), target, f"--{column_key}s")
    out = Path(out_dir) if out_dir else target.grids_root / f"{rows.key}-x-{cols.key}"
    return make_grid(base, rows, cols, out, device=device, dtype=dtype, notify=notify)
