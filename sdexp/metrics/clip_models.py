"""CLIP models behind one small interface, so every metric works with any of them.

``load_clip(spec)`` gives a ``ClipModel``: ``encode_images`` and ``encode_texts`` return
L2-normalised embeddings, ``score`` is torchmetrics' CLIP-score convention (100 × max(cos, 0)).
Specs:
- ``tiny_shapes`` (the built-in judge) or a folder holding a sdexp model with ``clip/`` (a `sdexp
  pretrain` result): transformers CLIP;
- ``open_clip:MODEL:PRETRAINED``: any open_clip architecture with a pretrained tag (downloaded and
  cached by open_clip when online) or a local weights file (.safetensors, or a pickle checkpoint,
  loaded with weights_only); ``open_clip:MODEL:none`` is random weights, for plumbing tests only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sdexp.errors import UserError


class ClipModel:
    """What every metric needs of a CLIP: normalised image and text embeddings, and the CLIP score."""

    name: str

    def encode_images(self, images) -> torch.Tensor:
        raise NotImplementedError

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def score(self, images, texts: list[str]) -> torch.Tensor:
        """Per-pair CLIP score, 100 × max(cos, 0) (torchmetrics' convention)."""
        cos = (self.encode_images(images) * self.encode_texts(texts)).sum(dim=-1)
        return 100.0 * cos.clamp_min(0)


@dataclass
class TransformersClip(ClipModel):
    """A transformers CLIPModel with its tokenizer and image preparation."""

    name: str
    model: object
    tokenizer: object
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device

    def _pixels(self, images) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        size = self.image_size
        arrays = []
        for img in images:
            img = img.convert("RGB")
            if img.size != (size, size):
                w, h = img.size
                s = min(w, h)
                img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            arrays.append(np.asarray(img, dtype=np.float32) / 255.0)
        return normalized_batch(arrays, self.mean, self.std, self.device)

    @torch.no_grad()
    def encode_images(self, images, batch_size: int = 256) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch_size):
            feats = self.model.get_image_features(pixel_values=self._pixels(images[i : i + batch_size]))
            out.append(_features(feats))
        return torch.nn.functional.normalize(torch.cat(out).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 512) -> torch.Tensor:
        out = []
        tok = self.tokenizer
        for i in range(0, len(texts), batch_size):
            ids = tok(
                list(texts[i : i + batch_size]),
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            out.append(_features(self.model.get_text_features(input_ids=ids)))
        return torch.nn.functional.normalize(torch.cat(out).float(), dim=-1)


def normalized_batch(arrays, mean, std, device) -> torch.Tensor:
    """HWC float images in [0, 1] as one NCHW batch normalised by per-channel ``mean``/``std``
    (what every image tower here expects after its own resize and crop)."""
    import numpy as np

    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    return ((x - mean) / std).to(device)


def _features(out) -> torch.Tensor:
    """transformers 5 may return a model output rather than a tensor from get_*_features."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected CLIP features output {type(out).__name__}")


class OpenClip(ClipModel):
    """An open_clip model with its own preprocessing and tokenizer."""

    def __init__(self, name: str, model, preprocess, tokenizer, device):
        self.name, self.model, self.preprocess, self.tokenizer = name, model, preprocess, tokenizer
        self.device = torch.device(device)

    @torch.no_grad()
    def encode_images(self, images, batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.stack([self.preprocess(img.convert("RGB")) for img in images[i : i + batch_size]])
            out.append(self.model.encode_image(x.to(self.device)).float())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            ids = self.tokenizer(list(texts[i : i + batch_size])).to(self.device)
            out.append(self.model.encode_text(ids).float())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def _load_open_clip(spec: str, device) -> OpenClip:
    import open_clip

    parts = spec.split(":", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise UserError(
            f"clip model: {spec!r}: write open_clip:MODEL:PRETRAINED (a pretrained tag, a local weights file, "
            "or none for random weights), e.g. open_clip:ViT-B-32:laion2b_s34b_b79k"
        )
    _, arch, pretrained = parts
    if arch not in open_clip.list_models():
        raise UserError(f"clip model: {arch!r} is not an open_clip model; see open_clip.list_models()")
    if pretrained.lower() == "none":
        pretrained = None
    elif "/" in pretrained or pretrained.endswith((".safetensors", ".bin", ".pt", ".pth")):
        weights = Path(pretrained).expanduser()
        if not weights.is_file():
            raise UserError(f"clip model: weights file {weights} does not exist")
        pretrained = str(weights)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained, device=device
        )
    except Exception as err:  # open_clip raises RuntimeError/OSError/HF errors for a failed fetch
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"clip model: could not load open_clip {arch} weights {pretrained!r} ({first[:200]}); offline, "
            "pass a local weights file: open_clip:MODEL:/path/to/open_clip_model.safetensors"
        ) from None
    return OpenClip(
        f"open_clip:{arch}:{parts[2]}", model.eval(), preprocess, open_clip.get_tokenizer(arch), device
    )


def _load_sdexp_clip(model_dir: Path, device) -> ClipModel:
    """A model folder's clip/ (vision tower + projections) joined with its text_encoder/."""
    import json

    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    clip_dir = model_dir / "clip"
    config = CLIPConfig.from_pretrained(clip_dir)
    model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(load_file(clip_dir / "model.safetensors"), strict=False)
    if unexpected or any(not k.startswith("text_model.") for k in missing):
        raise UserError(f"{clip_dir}: weights do not match its config.json; the model folder is damaged")
    # The CLIP's text tower is the model's text_encoder/ (same weights, stored once).
    text_weights = load_file(model_dir / "text_encoder" / "model.safetensors")
    model.text_model.load_state_dict(
        {k.removeprefix("text_model."): v.float() for k, v in text_weights.items()}
    )
    prep = json.loads((clip_dir / "preprocessor_config.json").read_text())
    return TransformersClip(
        name=model_dir.name,
        model=model.float().eval().to(device),
        tokenizer=CLIPTokenizer.from_pretrained(model_dir / "tokenizer"),
        image_size=config.vision_config.image_size,
        mean=tuple(prep["image_mean"]),
        std=tuple(prep["image_std"]),
        device=torch.device(device),
    )


_LOADED: dict[tuple[str, str], ClipModel] = {}


def load_clip(spec: str | Path, device: str | torch.device = "cpu") -> ClipModel:
    """A CLIP by spec (see the module docstring). A judge is frozen and only ever run in eval mode,
    so one per (spec, device) is kept for the process: a sweep's trials share it."""
    key = (str(spec), str(torch.device(device)))
    if key not in _LOADED:
        _LOADED[key] = _load_clip(spec, device)
    return _LOADED[key]


def _load_clip(spec: str | Path, device: str | torch.device) -> ClipModel:
    from sdexp.models.loading import resolve_model

    if str(spec).startswith("open_clip:"):
        return _load_open_clip(str(spec), device)
    if str(spec) == "tiny_shapes" or (Path(spec).expanduser() / "clip" / "config.json").exists():
        model_dir = resolve_model(spec, key="clip model")
        if not (model_dir / "clip" / "config.json").exists():
            raise UserError(f"clip model: {model_dir} has no clip/ folder")
        return _load_sdexp_clip(model_dir, device)
    raise UserError(
        f"clip model: {spec!r} is not a known CLIP; use tiny_shapes, a model folder with a clip/ subfolder "
        "(as `sdexp pretrain` writes) or open_clip:MODEL:PRETRAINED"
    )
