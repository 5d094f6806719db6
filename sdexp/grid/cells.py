"""Generating a grid's cells: each base loaded once, adapters swapped on it, one seed per cell.

Cells are grouped by base (model, VAE, schedule, embedding) and, within a base, by LoRA: the LoRA is
loaded with ``sdexp.generate``'s loader, each of its cells set to its own scale, and then taken off
again (peft layers replaced by the layers they wrap), so the next LoRA meets the untouched base.
A cell's image is the image ``sdexp generate`` makes from the same fields: the same loading, the
same pipeline, a CPU generator seeded with the cell's seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sdexp.errors import UserError
from sdexp.grid.spec import GenerationSpec
from sdexp.samplers import SAMPLERS, a1111_name


@dataclass
class Cell:
    row: int
    col: int
    spec: GenerationSpec
    image: object = None  # PIL image, once generated
    parameters: str = ""  # A1111 ``parameters`` text
    model_name: str = ""
    adapter_name: str | None = None


def check_specs(specs: list[GenerationSpec]) -> None:
    """Every LoRA, embedding, scheduler and size checked before any model loads."""
    from sdexp.generate import check_embeddings, check_loras

    for spec in specs:
        if spec.scheduler not in SAMPLERS:
            raise UserError(
                f"scheduler: unknown scheduler {spec.scheduler!r}; choose from {', '.join(SAMPLERS)}"
            )
        if spec.steps < 1:
            raise UserError(f"steps: must be at least 1 (got {spec.steps})")
        for name, side in (("width", spec.width), ("height", spec.height)):
            if side is not None and (side < 8 or side % 8):
                raise UserError(f"{name}: {side} is not a positive multiple of 8")
    for lora in {s.lora for s in specs if s.lora}:
        check_loras([(lora, 1.0)])
    for embedding in {s.embedding for s in specs if s.embedding}:
        check_embeddings([embedding])


def _torch_dtype(dtype: str, device):
    import torch

    from sdexp.models.loading import DTYPES

    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"--dtype: unknown dtype {dtype!r}; choose auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _groups(cells: list[Cell]) -> dict[tuple, dict[str | None, list[Cell]]]:
    """base key -> LoRA -> cells, in the order they first appear."""
    groups: dict[tuple, dict[str | None, list[Cell]]] = {}
    for cell in cells:
        groups.setdefault(cell.spec.base_key, {}).setdefault(cell.spec.lora, []).append(cell)
    return groups


def generate_cells(
    cells: list[Cell], *, device: str = "auto", dtype: str = "auto", notify: Callable[[str], None] = print
) -> list[Cell]:
    """Fill each cell's image, parameters text, model and adapter name; returns ``cells``."""
    from sdexp.generate import _device

    check_specs([c.spec for c in cells])
    dev = _device(device)
    torch_dtype = _torch_dtype(dtype, dev)
    groups = _groups(cells)
    for i, by_lora in enumerate(groups.values(), 1):
        first = next(iter(by_lora.values()))[0].spec
        notify(
            f"base {i}/{len(groups)}: {first.model}" + (f" + {first.embedding}" if first.embedding else "")
        )
        _BaseCells(first, dev, torch_dtype).generate(by_lora)
    return cells


class _BaseCells:
    """One loaded base, its pipelines (one per scheduler) and the LoRAs swapped on it."""

    def __init__(self, spec: GenerationSpec, device, torch_dtype):
        from sdexp.generate import check_embeddings, load_embeddings
        from sdexp.models.loading import load_base

        self.device = device
        self.base = load_base(
            spec.model,
            dtype=torch_dtype,
            vae=spec.vae,
            family=spec.family,
            prediction_type=spec.prediction_type,
            zero_terminal_snr=spec.zero_terminal_snr,
        )
        self.embeddings = check_embeddings([spec.embedding]) if spec.embedding else []
        load_embeddings(self.base, self.embeddings)
        self.pipes: dict[str, object] = {}

    def pipeline(self, scheduler: str):
        from sdexp.samplers import make_scheduler

        if scheduler not in self.pipes:
            pipe = self.base.pipeline(scheduler=make_scheduler(scheduler, self.base.noise_scheduler.config))
            pipe.set_progress_bar_config(disable=True)
            self.pipes[scheduler] = pipe.to(self.device)
        return self.pipes[scheduler]

    def generate(self, by_lora: dict[str | None, list[Cell]]) -> None:
        from sdexp.generate import check_loras, load_loras
        from sdexp.models.base_pool import strip_adapters

        for lora, cells in by_lora.items():
            specs = check_loras([(lora, 1.0)]) if lora else []
            if specs:
                pipe = self.pipeline(cells[0].spec.scheduler)
                load_loras(pipe, specs, self.base.family)
                pipe.to(self.device)
            try:
                for cell in cells:
                    self._cell(cell, specs[0] if specs else None)
            finally:
                if specs:
                    for module in (self.base.unet, *self.base.text_encoders):
                        strip_adapters(module)

    def _cell(self, cell: Cell, lora) -> None:
        import torch

        from sdexp.export.lora_files import addnet_hash_file
        from sdexp.png_info import format_parameters
        from sdexp.sampling import run_pipeline

        s = cell.spec
        pipe = self.pipeline(s.scheduler)
        if lora is not None:
            pipe.set_adapters([lora.name], adapter_weights=[s.scale])
        width = s.width or self.base.native_resolution
        height = s.height or self.base.native_resolution
        generator = torch.Generator("cpu").manual_seed(s.seed)
        with torch.inference_mode():
            (cell.image,) = run_pipeline(
                pipe,
                [s.prompt],
                negative_prompt=s.negative,
                steps=s.steps,
                guidance=s.guidance,
                width=width,
                height=height,
                generators=[generator],
            )
        extra: dict[str, object] = {}
        hashes = {}
        if lora is not None:
            hashes = {lora.name: _hash(lora.path, addnet_hash_file)[:12]}
            extra["Lora scales"] = f"{lora.name}: {s.scale:g}"
        if self.embeddings:
            # A1111's TI hash: the whole file's SHA-256, first 10 hex digits.
            extra["TI hashes"] = ", ".join(
                f"{e.token}: {_hash(e.path, _sha256)[:10]}" for e in self.embeddings
            )
        cell.parameters = format_parameters(
            s.prompt,
            s.negative,
            steps=s.steps,
            sampler=a1111_name(s.scheduler),
            cfg_scale=s.guidance,
            seed=s.seed,
            width=width,
            height=height,
            model=self.base.name,
            lora_hashes=hashes,
            extra=extra,
        )
        cell.model_name = self.base.name
        cell.adapter_name = lora.name if lora is not None else None


_HASHES: dict[tuple, str] = {}


def _hash(path: Path, fn) -> str:
    key = (str(path), path.stat().st_mtime_ns, fn.__name__)
    if key not in _HASHES:
        _HASHES[key] = fn(path)
    return _HASHES[key]


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
