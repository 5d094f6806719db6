"""The diffusers configs of the released base models, shipped in the package, so that real
single-file checkpoints load with no download: ``sd15``, ``sd21`` (768 px v-prediction),
``sd21_base`` (512 px epsilon) and ``sdxl`` (SDXL 1.0 base).

``sdexp/models/configs/NAME`` holds the JSON configs (see its README for their sources);
:func:`config_dir` completes a copy in the cache with CLIP's tokenizer files made from
open_clip's BPE list (:mod:`sdexp.models.clip_vocab`), which are too big to commit.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

CONFIGS_ROOT = Path(__file__).resolve().parent / "configs"
CONFIG_NAMES = ("sd15", "sd21", "sd21_base", "sdxl")
_LAYOUT_VERSION = 1  # bump when config_dir's output changes for the same shipped files


def shipped_dir(name: str) -> Path:
    """The shipped config folder ``name`` (configs only: no vocab.json / merges.txt)."""
    if name not in CONFIG_NAMES:
        raise ValueError(f"no shipped config {name!r}; known: {', '.join(CONFIG_NAMES)}")
    return CONFIGS_ROOT / name


def tokenizer_folders(folder: Path) -> dict[str, str]:
    """{tokenizer folder: its pad token} of a pipeline config folder, from model_index.json."""
    index = json.loads((folder / "model_index.json").read_text())
    out = {}
    for component, entry in sorted(index.items()):
        if isinstance(entry, list) and entry[-1] == "CLIPTokenizer":
            special = json.loads((folder / component / "special_tokens_map.json").read_text())
            out[component] = special["pad_token"]
    return out


def _digest(folder: Path) -> str:
    from sdexp.models.clip_vocab import bpe_path

    h = hashlib.sha256(f"{_LAYOUT_VERSION}".encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(hashlib.sha256(bpe_path().read_bytes()).digest())
    return h.hexdigest()[:12]


def config_dir(name: str) -> Path:
    """A complete diffusers config folder for ``name`` (configs and tokenizer files, no weights)
    in the cache, built atomically on first use; what ``from_single_file(config=…)`` reads."""
    from sdexp.atomic import build_folder_once
    from sdexp.models.clip_vocab import tokenizer_files
    from sdexp.models.tiny import cache_root

    source = shipped_dir(name)

    def build(staging: Path) -> None:
        shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("README*"))
        for folder, pad_token in tokenizer_folders(source).items():
            tokenizer_files(staging / folder, pad_token)

    return build_folder_once(
        cache_root() / "configs" / f"{name}-{_digest(source)}", build, "model_index.json"
    )
