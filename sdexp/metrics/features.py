"""Image feature extractors for the metrics that are defined on features other than CLIP's.

- ``load_dino(path)``: a local DINO/DINOv2 folder (transformers format); ``encode_images`` gives the
  L2-normalised CLS token, the embedding DreamBooth's DINO subject-fidelity metric compares.
- ``inception_features()``: clean-fid's InceptionV3 in its "clean" mode, so FID/KID from
  ``scores.fid_kid`` match published clean-fid numbers. It never downloads: the weights must already
  be in clean-fid's cache or be given as a path, since evaluation runs offline.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdexp.errors import UserError
from sdexp.metrics.clip_models import normalized_batch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_FILE = "inception-2015-12-05.pt"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


@dataclass
class DinoModel:
    """A DINO/DINOv2 backbone with the image preparation of its preprocessor_config.json."""

    name: str
    model: object
    crop: tuple[int, int]  # (height, width)
    resize: int  # shortest side before the centre crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device

    def _pixels(self, images) -> torch.Tensor:
        from PIL import Image

        ch, cw = self.crop
        arrays = []
        for img in images:
            img = img.convert("RGB")
            w, h = img.size
            scale = max(self.resize / min(w, h), ch / h, cw / w)
            size = (max(cw, round(w * scale)), max(ch, round(h * scale)))
            if size != (w, h):
                img = img.resize(size, Image.Resampling.BICUBIC)
            left, top = (size[0] - cw) // 2, (size[1] - ch) // 2
            img = img.crop((left, top, left + cw, top + ch))
            arrays.append(np.asarray(img, dtype=np.float32) / 255.0)
        return normalized_batch(arrays, self.mean, self.std, self.device)

    @torch.no_grad()
    def encode_images(self, images, batch_size: int = 64) -> torch.Tensor:
        """L2-normalised CLS-token embeddings [N, D] (last_hidden_state[:, 0], no pooler)."""
        out = []
        for i in range(0, len(images), batch_size):
            hidden = self.model(pixel_values=self._pixels(images[i : i + batch_size])).last_hidden_state
            out.append(hidden[:, 0].float())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def _height_width(value) -> tuple[int, int] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, dict) and "height" in value and "width" in value:
        return (int(value["height"]), int(value["width"]))
    if isinstance(value, dict) and "shortest_edge" in value:
        return (int(value["shortest_edge"]),) * 2
    return None


def _preprocessing(folder: Path) -> tuple[tuple[int, int], int, tuple, tuple]:
    """(crop, resize, mean, std) from preprocessor_config.json, else 224 and ImageNet statistics."""
    file = folder / "preprocessor_config.json"
    if not file.is_file():
        return (224, 224), 224, IMAGENET_MEAN, IMAGENET_STD
    cfg = json.loads(file.read_text())
    size = cfg.get("size")
    crop = _height_width(cfg.get("crop_size")) or _height_width(size) or (224, 224)
    resize = size if isinstance(size, int) else (size or {}).get("shortest_edge", min(crop))
    mean, std = cfg.get("image_mean", IMAGENET_MEAN), cfg.get("image_std", IMAGENET_STD)
    return crop, int(resize), tuple(mean), tuple(std)


def load_dino(path: str | Path, device: str | torch.device = "cpu") -> DinoModel:
    """A local DINO (ViTModel) or DINOv2 (Dinov2Model) folder written by save_pretrained."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"eval.dino: {folder} does not exist; pass a local DINO model folder (transformers format, "
            "e.g. facebook/dinov2-small saved with save_pretrained)"
        )
    try:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(folder, local_files_only=True)
        crop, resize, mean, std = _preprocessing(folder)
    except Exception as err:  # OSError/ValueError/KeyError for a bad folder or preprocessor_config.json
        raise UserError(
            f"eval.dino: could not load {folder} as a transformers model ({_first_line(err)}); pass a "
            "DINO/DINOv2 folder written by save_pretrained (config.json and model.safetensors)"
        ) from None
    if getattr(model, "main_input_name", None) != "pixel_values":
        raise UserError(f"eval.dino: {folder} holds a {model.config.model_type} model, not an image backbone")
    model, device = model.float().eval().to(device), torch.device(device)
    return DinoModel(folder.name, model, crop, resize, mean, std, device)


def cleanfid_cache_dir() -> Path:
    """Where clean-fid's feature_extractor looks for (and would download) the Inception weights."""
    return Path("./" if platform.system() == "Windows" else "/tmp")


def find_inception_weights(weights: str | Path | None = None) -> Path:
    """``weights`` if given, else clean-fid's cached file; never downloads."""
    from cleanfid.downloads_helper import inception_url

    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"eval.inception_weights: {path} does not exist; pass {INCEPTION_FILE}'s path")
        return path
    cached = cleanfid_cache_dir() / INCEPTION_FILE
    if cached.is_file():
        return cached
    raise UserError(
        f"eval.fid_features: inception needs clean-fid's InceptionV3 weights ({INCEPTION_FILE}), which are "
        f"not on this machine; download {inception_url} to {cleanfid_cache_dir().resolve()} or pass "
        "eval.inception_weights=PATH, or use eval.fid_features=clip"
    )


def inception_features(device: str | torch.device = "cpu", weights: str | Path | None = None):
    """``features(images) -> float64 [N, 2048]``: clean-fid's "clean" mode (PIL bicubic resize of each
    channel to 299 without quantising, values in [0, 255], clean-fid's InceptionV3W forward)."""
    from cleanfid.inception_torchscript import InceptionV3W
    from cleanfid.resize import build_resizer

    path = find_inception_weights(weights)
    try:
        base = torch.jit.load(str(path), map_location="cpu").eval()
        layers = base.layers
    except Exception as err:
        raise UserError(
            f"eval.inception_weights: {path} is not clean-fid's InceptionV3 TorchScript file "
            f"({_first_line(err)}); download {INCEPTION_FILE} again"
        ) from None
    model = InceptionV3W.__new__(InceptionV3W)  # its forward, without its downloading __init__
    torch.nn.Module.__init__(model)
    model.base, model.layers, model.resize_inside = base, layers, False
    model, resize = model.to(device), build_resizer("clean")

    @torch.no_grad()
    def features(images, batch_size: int = 64) -> np.ndarray:
        out = [np.zeros((0, 2048))]
        for i in range(0, len(images), batch_size):
            batch = np.stack([resize(np.asarray(img.convert("RGB"))) for img in images[i : i + batch_size]])
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(device)
            out.append(model(x).double().cpu().numpy())
        return np.concatenate(out)

    return features
