"""Read back an offline W&B run (its run-<id>.wandb record log) without a server or the wandb CLI.

wandb 0.31 dropped the Python reader (wandb.sdk.internal.datastore); the file is still a LevelDB-style
log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each chunk
<crc32 u32><length u16><type u8><payload>, where crc32 = zlib.crc32(payload, crc32(type byte)) and the
reassembled payloads are wandb.proto.wandb_internal_pb2.Record messages.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("<4sHB")
_CHUNK = struct.Struct("<IHB")
_IDENT, _MAGIC, _VERSION = b":W&B", 0xBEE1, 0
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def find_wandb_file(path: Path | str) -> Path:
    """The single run-*.wandb file at/under ``path`` (a .wandb file, a run folder or an sdexp run dir)."""
    path = Path(path)
    if path.is_file():
        return path
    found = sorted({p.resolve() for p in path.glob("*.wandb")}) or sorted(
        {p.resolve() for p in path.glob("wandb/*run-*/run-*.wandb")}
    )
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise FileNotFoundError(
            f"{what} W&B run files (run-*.wandb) under {path}; pass the run folder itself"
        )
    return found[0]


def iter_records(path: Path | str) -> Iterator[Any]:
    """Yield the Record protos of a .wandb file; a torn tail (crashed writer) ends the iteration."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if len(data) < _HEADER.size:
        return
    ident, magic, version = _HEADER.unpack_from(data)
    if (ident, magic) != (_IDENT, _MAGIC) or version != _VERSION:
        raise ValueError(f"{path}: not a W&B record log version {_VERSION} (header {data[:7]!r})")
    pos, pending = _HEADER.size, b""
    while pos + _CHUNK.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:  # zero padding at the end of a block
            pos += left
            continue
        crc, length, kind = _CHUNK.unpack_from(data, pos)
        payload = data[pos + _CHUNK.size : pos + _CHUNK.size + length]
        if len(payload) < length or (crc == 0 and length == 0 and kind == 0):
            return  # torn or preallocated tail
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: checksum mismatch at byte {pos}")
        pos += _CHUNK.size + length
        pending = payload if kind in (_FULL, _FIRST) else pending + payload
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def _path(item: Any) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _apply(target: dict, items: Any, removes: Any = ()) -> None:
    """Apply wandb {key|nested_key, value_json} updates (and removals) to a nested dict."""
    for item in items:
        *parents, leaf = _path(item)
        node = target
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(item.value_json)
    for item in removes:
        *parents, leaf = _path(item)
        node = target
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)


def _artifact(record: Any) -> dict:
    return {
        "name": record.name,
        "type": record.type,
        "aliases": list(record.aliases),
        "metadata": json.loads(record.metadata) if record.metadata else {},
        "files": {entry.path: entry.local_path for entry in record.manifest.contents},
    }


def read_offline_run(run_folder: Path | str) -> dict:
    """Return {"history": [rows by _step], "config", "summary", "run": {id, project, entity, group, name, tags},
    "exit_code", "artifacts": [{name, type, aliases, metadata, files: {path: local file}}]} of a local W&B
    run; wandb's internal "_wandb" entries are dropped from config and summary."""
    artifacts: list[dict] = []
    history: dict[int, dict] = {}
    config: dict = {}
    summary: dict = {}
    run: dict = {}
    exit_code = None
    for record in iter_records(find_wandb_file(run_folder)):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = {
                "id": r.run_id,
                "project": r.project,
                "entity": r.entity or None,
                "group": r.run_group or None,
                "name": r.display_name or None,
                "tags": list(r.tags),
                "job_type": r.job_type or None,
            }
            _apply(config, r.config.update, r.config.remove)
            _apply(summary, r.summary.update, r.summary.remove)
        elif kind == "config":
            _apply(config, record.config.update, record.config.remove)
        elif kind == "summary":
            _apply(summary, record.summary.update, record.summary.remove)
        elif kind == "history":
            row: dict = {}
            _apply(row, record.history.item)
            step = int(row.get("_step", record.history.step.num))
            history.setdefault(step, {}).update(row)
        elif kind == "exit":
            exit_code = record.exit.exit_code
        elif kind == "artifact":
            artifacts.append(_artifact(record.artifact))
    config.pop("_wandb", None)
    summary.pop("_wandb", None)
    rows = [history[s] for s in sorted(history)]
    return {
        "history": rows,
        "config": config,
        "summary": summary,
        "run": run,
        "exit_code": exit_code,
        "artifacts": artifacts,
    }
