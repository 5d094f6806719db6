"""On-disk caches of what the frozen encoders make of the data, shared by every run and sweep trial.

Every trial of a sweep trains on the same images through the same VAE (and, with fixed captions,
the same text encoder), so their outputs are computed once and kept: one small safetensors file
per entry, written atomically, keyed by a sha256 of everything the output depends on.

- **Latents** are cached as the VAE's latent *distribution* (mean and log-variance), not a sample:
  training draws the sample with its own generator exactly as it does uncached, so cached and
  uncached runs see the same latents. The key holds the image file's content hash, the transform
  (bucket size, crop mode, padding colour, whether it is flipped) and the model's fingerprint.
  A flip is drawn per epoch, so both orientations end up cached; a random crop would need a new
  entry every epoch, so with the latent cache random crops become centre crops, and the run says so.
- **Text** embeddings are cached per caption when the text encoder is frozen and the caption
  policy never changes the text (no shuffling or dropout); otherwise the encoder stays live.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from sdexp.atomic import atomic_write_bytes

_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str | Path) -> str:
    """``sha256_file``, remembered per (path, size, mtime) so each file is read once per process."""
    path = Path(path)
    st = path.stat()
    stamp = (str(path), st.st_size, st.st_mtime_ns)
    if stamp not in _DIGESTS:
        _DIGESTS[stamp] = sha256_file(path)
    return _DIGESTS[stamp]


def entry_key(**parts) -> str:
    """A stable key from named parts (JSON with sorted keys, hashed)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_cache_dir() -> Path:
    from sdexp.models.tiny import cache_root

    return cache_root() / "encodings"


class TensorCache:
    """``root/<kind>/<namespace>/<key[:2]>/<key>.safetensors``; the namespace is the encoder's identity."""

    def __init__(self, root: str | Path, kind: str, namespace: str):
        self.folder = Path(root).expanduser() / kind / namespace
        self.hits = 0
        self.stored = 0

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        """The cached tensor, or None when absent or unreadable (a torn or foreign file is a miss)."""
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tensor = load_file(path)["value"]
        except Exception:  # noqa: BLE001 - any unreadable entry is recomputed and rewritten
            return None
        self.hits += 1
        return tensor

    def get_tensors(self, key: str) -> dict[str, torch.Tensor] | None:
        """Several named tensors of one entry (a caption's Conditioning), or None when absent or unreadable."""
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(path)
        except Exception:  # noqa: BLE001 - any unreadable entry is recomputed and rewritten
            return None
        self.hits += 1
        return tensors

    def put_tensors(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save

        data = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
        atomic_write_bytes(self.path(key), data)
        self.stored += 1

    def put(self, key: str, tensor: torch.Tensor) -> None:
        from safetensors.torch import save

        atomic_write_bytes(self.path(key), save({"value": tensor.detach().to("cpu").contiguous()}))
        self.stored += 1

    def entries(self) -> int:
        return sum(1 for _ in self.folder.rglob("*.safetensors")) if self.folder.is_dir() else 0


def encoder_namespace(model_fingerprint: str, component: str, dtype: torch.dtype) -> str:
    """Which encoder made an entry: the base's content fingerprint, the component and its dtype."""
    return f"{model_fingerprint}-{component}-{str(dtype).removeprefix('torch.')}"


def caption_key(caption: str, max_length: int) -> str:
    return entry_key(caption=caption, max_length=max_length)


def latent_key(image_digest: str, transform: dict) -> str:
    return entry_key(image=image_digest, **transform)


def cache_folder(setting: str | None) -> Path:
    """``data.cache.dir``, else ``$SDEXP_CACHE/encodings`` (``~/.cache/sdexp/encodings``)."""
    return Path(os.path.expanduser(setting)) if setting else default_cache_dir()
