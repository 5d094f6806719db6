"""Atomic file writes: readers see the old file or the new one, never a torn one.

Checkpoints, run.json and generated images all go through here (tmp beside the target, fsync,
os.replace, then fsync of the folder so the rename itself survives a crash).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write_stream(path, lambda f: f.write(data))


def atomic_write_stream(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """``write(f)`` fills a temporary file beside ``path``, which then replaces it (for data made
    piece by piece, e.g. a multi-GB checkpoint that is never held in memory whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:  # honours the umask, unlike mkstemp's 0600
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # persist the rename; not possible on every platform/filesystem
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def build_folder_once(target: str | Path, build: Callable[[Path], object], marker: str) -> Path:
    """``target``, built by ``build(staging)`` in a hidden folder beside it and renamed into place
    unless it already holds ``marker``: a cache entry that concurrent processes may race to build
    (the loser's copy is dropped) and that a crash never leaves half-written."""
    target = Path(target)
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first
            if not (target / marker).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """A hard link of ``src`` at ``dst`` (files that are never rewritten in place share their
    bytes), or a copy where the filesystem cannot link. Usable as ``shutil.copytree``'s copy_function."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_json_atomic(path: str | Path, data: dict) -> Path:
    text = json.dumps(data, indent=2, default=str) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))
