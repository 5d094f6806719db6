"""Textual-inversion embedding files: written by a run, read by ``sdexp generate``/``eval --embedding``.

- ``NAME.safetensors``, what AUTOMATIC1111, ComfyUI and kohya read: ``{"emb_params": [n, dim]}`` for
  SD 1.x/2.x, ``{"clip_l": [n, 768], "clip_g": [n, 1280]}`` for SDXL (the keys are the family's
  ``TextEncoderSlot.embedding_key``). A1111 takes the prompt word from the file name, so NAME is the
  token without the characters file names cannot hold (``<sks-star>`` → ``sks-star``).
- ``learned_embeds.safetensors`` ``{token: [n, dim]}`` for one-encoder families: diffusers'
  ``pipe.load_textual_inversion(checkpoint_folder)`` reads it with no other argument. SDXL has no such
  form in diffusers; it loads the clip_l/clip_g file one encoder at a time (docs/methods.md).
Metadata: ``sdexp.token`` (the token it was trained with), vector count, modelspec architecture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sdexp.errors import UserError

DIFFUSERS_FILE = "learned_embeds.safetensors"
TOKEN_KEY = "sdexp.token"
A1111_KEYS = ("emb_params", "clip_l", "clip_g")


def file_stem(token: str) -> str:
    """The token as a file name A1111 lists it by (no <>:"/\\|?* or spaces)."""
    return re.sub(r'[<>:"/\\|?*\s]', "", token).strip(".") or "embedding"


def save_embedding(
    out_dir: Path, *, token: str, vectors: tuple[torch.Tensor, ...], family, prediction_type: str,
    step: int, title: str,
) -> dict[str, Path]:  # fmt: skip
    """Write the A1111/ComfyUI file (and, with one encoder, diffusers' file) into ``out_dir``."""
    from safetensors.torch import save_file

    rows = [v.detach().float().cpu().contiguous() for v in vectors]
    metadata = {
        TOKEN_KEY: token,
        "sdexp.num_vectors": str(rows[0].shape[0]),
        "sdexp.step": str(step),
        "modelspec.architecture": f"{family.architecture(prediction_type)}/textual-inversion",
        "modelspec.title": title,
    }
    keyed = {slot.embedding_key: r for slot, r in zip(family.text_encoders, rows, strict=True)}
    paths = {"embedding": Path(out_dir) / f"{file_stem(token)}.safetensors"}
    save_file(keyed, paths["embedding"], metadata=metadata)
    if len(rows) == 1:
        paths["diffusers_embedding"] = Path(out_dir) / DIFFUSERS_FILE
        save_file({token: rows[0]}, paths["diffusers_embedding"], metadata=metadata)
    return paths


@dataclass(frozen=True)
class Embedding:
    """An embedding file read and checked: its token and vectors per text encoder of ``family``."""

    path: Path
    token: str
    tensors: dict[str, torch.Tensor]
    family: str | None  # sdxl for clip_l/clip_g, None for a one-encoder file (SD 1.x or 2.x)

    def vectors(self, family) -> tuple[torch.Tensor, ...]:
        """Per text encoder of ``family``, in its order; a UserError if the file is for another family."""
        keys = [slot.embedding_key for slot in family.text_encoders]
        if all(k in self.tensors for k in keys):
            return tuple(self.tensors[k] for k in keys)
        if len(keys) == 1 and len(self.tensors) == 1:  # emb_params, or diffusers' {token: tensor}
            return (next(iter(self.tensors.values())),)
        raise UserError(
            f"--embedding: {self.path} holds {', '.join(sorted(self.tensors))}, which is not an embedding for "
            f"{family.label} (it needs {' and '.join(keys)})"
        )


def is_embedding_file(path: Path) -> bool:
    """Whether a .safetensors file is a textual-inversion embedding (A1111 keys or sdexp's metadata)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            keys, metadata = set(f.keys()), f.metadata() or {}
    except Exception:  # noqa: BLE001 - not a readable safetensors file
        return False
    return TOKEN_KEY in metadata or keys in ({"emb_params"}, {"clip_l", "clip_g"})


def checkpoint_embedding(folder: Path) -> Path | None:
    """The A1111 embedding file of a textual-inversion checkpoint folder, or None."""
    found = [
        p
        for p in sorted(Path(folder).glob("*.safetensors"))
        if p.name != DIFFUSERS_FILE and is_embedding_file(p)
    ]
    return found[0] if found else None


def parse_embedding_arg(value: str) -> tuple[Path, str | None]:
    """``FILE`` or ``FILE:TOKEN`` (a path that exists as given wins over the split)."""
    path = Path(value).expanduser()
    if path.exists() or ":" not in value:
        return path, None
    file, _, token = value.rpartition(":")
    return Path(file).expanduser(), token or None


def read_embedding(path: str | Path, token: str | None = None) -> Embedding:
    """Read ``path`` (a file, or a checkpoint folder holding one); the token is ``token``, else the
    one stored in the file, else the file name as AUTOMATIC1111 uses it."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if path.is_dir():
        found = checkpoint_embedding(path)
        if found is None:
            raise UserError(f"--embedding: {path} is a folder without an embedding .safetensors")
        path = found
    if not path.is_file():
        raise UserError(f"--embedding: {path} does not exist")
    if path.suffix != ".safetensors":
        raise UserError(
            f"--embedding: {path} is not a .safetensors file (pickle .pt/.bin files can run code)"
        )
    try:
        with safe_open(str(path), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - safetensors raises several kinds
        raise UserError(f"--embedding: cannot read {path}: {err}") from None
    if not tensors or any(t.ndim not in (1, 2) for t in tensors.values()):
        raise UserError(f"--embedding: {path} is not a textual-inversion embedding (vectors [n, dim])")
    tensors = {k: (t[None] if t.ndim == 1 else t) for k, t in tensors.items()}
    family = "sdxl" if {"clip_l", "clip_g"} <= set(tensors) else None
    if family is None and len(tensors) != 1:
        raise UserError(
            f"--embedding: {path} holds {', '.join(sorted(tensors))}; an embedding holds emb_params "
            "(SD 1.x/2.x), clip_l and clip_g (SDXL), or one token's vectors (diffusers)"
        )
    own = next(iter(tensors)) if len(tensors) == 1 and next(iter(tensors)) not in A1111_KEYS else None
    name = token or metadata.get(TOKEN_KEY) or own or path.stem  # own: diffusers' {token: vectors}
    return Embedding(path, name, tensors, family)
