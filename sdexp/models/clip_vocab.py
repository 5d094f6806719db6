"""CLIP's real tokenizer files (vocab.json, merges.txt), made offline from the BPE list open_clip ships.

Every Stable Diffusion text encoder uses the same 49,408-token byte-level BPE of OpenAI CLIP; only
the padding token differs (``<|endoftext|>`` for SD 1.x and SDXL's first encoder, ``!`` for the
OpenCLIP encoders of SD 2.x and SDXL). open_clip_torch carries the merges as
``bpe_simple_vocab_16e6.txt.gz``; the vocabulary is derived from them exactly as CLIP does:
the 256 byte symbols, the same with ``</w>``, one token per merge, then the two special tokens.
So real single-file checkpoints load with their real tokenizer and no download.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 49408
_N_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894 merges after the two 256-symbol alphabets
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def bpe_path() -> Path:
    """open_clip's merges file, found without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip_torch is not installed; it carries CLIP's BPE merges")
    path = Path(next(iter(spec.submodule_search_locations))) / _BPE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the open_clip_torch install")
    return path


def byte_symbols() -> list[str]:
    """The 256 characters that stand for bytes in byte-level BPE, in vocabulary order: printable
    Latin-1 bytes stand for themselves and come first; every other byte, in byte order, takes the
    next code point from 256 upwards."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = sorted(set(range(256)) - set(printable))
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def clip_merges() -> list[str]:
    """CLIP's merges, one ``"a b"`` line each, in rank order (line 0 of the file is a header)."""
    lines = gzip.decompress(bpe_path().read_bytes()).decode("utf-8").split("\n")
    return lines[1 : 1 + _N_MERGES]


def clip_vocab(merges: list[str]) -> dict[str, int]:
    """token → id: bytes, bytes + ``</w>``, one token per merge, <|startoftext|>, <|endoftext|>."""
    base = byte_symbols()
    tokens = base + [s + "</w>" for s in base] + [m.replace(" ", "") for m in merges] + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"CLIP vocabulary has {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    return vocab


def tokenizer_configs(pad_token: str) -> dict[str, dict]:
    """tokenizer_config.json and special_tokens_map.json of a CLIP tokenizer padding with ``pad_token``."""
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": pad_token, "unk_token": EOS}
    config = {
        **special,
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        "tokenizer_class": "CLIPTokenizer",
    }
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


def dump_json(data: dict) -> str:
    """The one JSON spelling of shipped and generated config files (sorted, 2-space indent)."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def tokenizer_files(dest: str | Path, pad_token: str) -> Path:
    """Write a complete CLIP tokenizer folder at ``dest`` (vocab.json, merges.txt and its configs);
    same bytes on every call. SD 1.x pads with ``<|endoftext|>``, the OpenCLIP encoders with ``!``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    merges = clip_merges()
    vocab = clip_vocab(merges)
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} is not a single CLIP token")
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    for name, data in tokenizer_configs(pad_token).items():
        (dest / name).write_text(dump_json(data), encoding="utf-8")
    return dest
