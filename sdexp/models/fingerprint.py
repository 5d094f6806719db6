"""A content fingerprint of a model (a folder or a single checkpoint file), so caches of what a base
generates, and of what its encoders make of the data, follow its weights.

Hashing a 4 GB SD 1.5 folder or a 7 GB SDXL file takes seconds, so fingerprints are remembered in
the cache keyed by each file's path, size and mtime; a changed file changes the fingerprint, a
renamed folder does not.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sdexp.atomic import write_json_atomic

CONTENT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt")
NOT_CONTENT = ("prior_prompts.txt",)  # what sdexp asks the model, not what the model computes


def _files(model_dir: Path) -> list[Path]:
    if model_dir.is_file():
        return [model_dir]
    return sorted(
        p
        for p in model_dir.rglob("*")
        if p.is_file() and p.suffix in CONTENT_SUFFIXES and p.name not in NOT_CONTENT
    )


def _relative(path: Path, model_dir: Path) -> str:
    return path.name if model_dir.is_file() else str(path.relative_to(model_dir))


def _stamp(model_dir: Path, files: list[Path]) -> str:
    parts = [f"{_relative(p, model_dir)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return hashlib.sha256("\n".join([str(model_dir.resolve()), *parts]).encode()).hexdigest()


def model_fingerprint(model_dir: str | Path, cache_file: Path | None = None) -> str:
    """sha256 (16 hex digits) over every weight, config and tokenizer file's relative path and bytes
    (a single checkpoint file: its bytes)."""
    from sdexp.models.tiny import cache_root

    model_dir = Path(model_dir)
    files = _files(model_dir)
    cache_file = cache_file or cache_root() / "fingerprints.json"
    stamp = _stamp(model_dir, files)
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    if stamp in known:
        return known[stamp]
    digest = hashlib.sha256()
    for path in files:
        if not model_dir.is_file():
            digest.update(_relative(path, model_dir).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    fingerprint = digest.hexdigest()[:16]
    known[stamp] = fingerprint
    write_json_atomic(cache_file, known)
    return fingerprint
