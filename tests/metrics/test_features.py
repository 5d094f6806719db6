"""Feature extractors: a tiny random DINOv2 folder, and clean-fid Inception's offline weight lookup."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sdexp.errors import UserError
from sdexp.metrics import features
from sdexp.metrics.features import INCEPTION_FILE, inception_features, load_dino


def _images():
    noise = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    return [Image.new("RGB", (28, 28), "red"), Image.fromarray(noise), Image.new("RGB", (28, 28), "red")]


def _check_embeddings(emb: torch.Tensor) -> None:
    assert emb.shape == (3, 32) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(emb[0], emb[2], atol=1e-6)  # exactly equal only within one batch
    assert not torch.allclose(emb[0], emb[1], atol=1e-3)


def test_dino_defaults_without_preprocessor_config(tiny_dino_dir):
    dino = load_dino(tiny_dino_dir)
    assert dino.name == "tiny-dinov2" and dino.crop == (224, 224) and dino.resize == 224
    emb = dino.encode_images(_images())
    _check_embeddings(emb)
    assert torch.equal(emb[0], emb[2])


def test_dino_uses_preprocessor_config(tiny_dino_dir, tmp_path):
    import shutil

    folder = tmp_path / "with-prep"
    shutil.copytree(tiny_dino_dir, folder)
    prep = {"crop_size": 28, "size": {"shortest_edge": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    (folder / "preprocessor_config.json").write_text(json.dumps(prep))
    dino = load_dino(folder)
    assert dino.crop == (28, 28) and dino.resize == 32 and dino.mean == (0.5, 0.5, 0.5)
    assert dino._pixels(_images()).shape == (3, 3, 28, 28)
    emb = dino.encode_images(_images(), batch_size=2)  # batches must not change the result
    _check_embeddings(emb)
    assert torch.allclose(emb, dino.encode_images(_images()), atol=1e-6)


def test_dino_missing_or_broken_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="eval.dino: .* does not exist"):
        load_dino(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="eval.dino: could not load .*empty"):
        load_dino(tmp_path / "empty")


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """An empty clean-fid cache, and any download attempt fails the test."""

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr("urllib.request.urlopen", no_download)
    monkeypatch.setattr(features, "cleanfid_cache_dir", lambda: tmp_path)
    return tmp_path


def test_our_lookup_folder_is_the_one_clean_fid_uses(monkeypatch):
    import cleanfid.features

    seen = {}

    class Recorder:
        def __init__(self, path, download=True, resize_inside=False):
            seen["path"] = path
            raise RuntimeError("stop")

    monkeypatch.setattr(cleanfid.features, "InceptionV3W", Recorder)
    with pytest.raises(RuntimeError, match="stop"):
        cleanfid.features.build_feature_extractor("clean", device=torch.device("cpu"))
    assert features.cleanfid_cache_dir() == features.Path(seen["path"])


def test_inception_without_weights_is_a_user_error(offline):
    with pytest.raises(UserError, match="eval.fid_features") as err:
        inception_features()
    assert INCEPTION_FILE in str(err.value) and str(offline) in str(err.value)
    assert "https://" in str(err.value) and "eval.inception_weights=PATH" in str(err.value)
    with pytest.raises(UserError, match="eval.inception_weights: .* does not exist"):
        inception_features(weights=offline / "missing.pt")


def test_inception_weights_that_are_not_torchscript_are_a_user_error(offline):
    fake = offline / "fake.pt"
    fake.write_bytes(b"not a TorchScript file")
    with pytest.raises(UserError, match="not clean-fid's InceptionV3 TorchScript file"):
        inception_features(weights=fake)
    (offline / INCEPTION_FILE).write_bytes(b"also not one")  # found in the cache, then rejected
    with pytest.raises(UserError, match=INCEPTION_FILE):
        inception_features()


class _MeanLayers(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


class _FakeInception(torch.nn.Module):
    """The shape of clean-fid's TorchScript Inception: a ``layers`` module giving 2048 features."""

    def __init__(self):
        super().__init__()
        self.layers = _MeanLayers()

    def forward(self, x):
        return self.layers(x)


def test_inception_pipeline_with_cached_stand_in_weights(offline):
    torch.jit.save(torch.jit.script(_FakeInception()), str(offline / INCEPTION_FILE))
    extract = inception_features()
    out = extract([Image.new("RGB", (64, 48), "white"), Image.new("RGB", (300, 310), "black")])
    assert out.shape == (2, 2048) and out.dtype == np.float64
    # clean mode feeds [0, 255] and InceptionV3W maps it with (x - 128) / 128
    assert np.allclose(out[0], 127 / 128, atol=1e-4) and np.allclose(out[1], -1.0, atol=1e-4)
