"""open_clip behind the same ClipModel interface (random weights: plumbing only, no download)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sdexp.errors import UserError
from sdexp.metrics.clip_models import load_clip
from sdexp.metrics.scores import clip_i, clip_t

ARCH = "ViT-S-32"  # the smallest plain ViT open_clip defines: a fast random model


@pytest.fixture(scope="module")
def random_clip():
    torch.manual_seed(0)
    return load_clip(f"open_clip:{ARCH}:none")


def test_random_open_clip_embeds_images_and_texts(random_clip):
    images = [Image.new("RGB", (64, 64), "red"), Image.new("RGB", (80, 50), "blue")]
    img, txt = random_clip.encode_images(images), random_clip.encode_texts(["a red square", "a blue square"])
    assert img.shape[0] == 2 and txt.shape == (2, img.shape[1])
    assert torch.allclose(img.norm(dim=1), torch.ones(2), atol=1e-5)
    assert clip_i(random_clip, images[:1], images[:1]) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= clip_t(random_clip, images, ["a red square", "a blue square"]) <= 100.0


def test_local_weights_file_loads_the_same_model(random_clip, tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in random_clip.model.state_dict().items()}, weights)
    loaded = load_clip(f"open_clip:{ARCH}:{weights}")
    texts = ["a green circle", "a photo of a dog"]
    assert torch.allclose(loaded.encode_texts(texts), random_clip.encode_texts(texts), atol=1e-5)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("open_clip:ViT-B-32", "open_clip:MODEL:PRETRAINED"),
        ("open_clip:NoSuchNet:none", "not an open_clip model"),
        ("open_clip:ViT-S-32:/nonexistent/weights.safetensors", "does not exist"),
        ("open_clip:ViT-S-32:laion2b_s34b_b79k", "local weights file"),  # no such tag / no network
        ("clip-of-my-dreams", "not a known CLIP"),
    ],
)
def test_bad_specs_say_what_to_do(spec, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=message):
        load_clip(spec)
