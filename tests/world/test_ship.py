"""Shipping a pretrain result as the built-in model checks what the package promises."""

from __future__ import annotations

import shutil

import pytest
import torch

from sdexp.errors import UserError
from sdexp.models import loading
from sdexp.world.ship import check_shippable, ship


@pytest.fixture()
def model_copy(tmp_path):
    return shutil.copytree(loading.BUILTIN_DIR / "tiny_shapes", tmp_path / "model")


def test_ships_a_complete_fp16_folder(model_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "BUILTIN_DIR", tmp_path / "builtin")
    (tmp_path / "builtin" / "tiny_shapes").mkdir(parents=True)
    (tmp_path / "builtin" / "tiny_shapes" / "stale.txt").write_text("old")
    target = ship(model_copy)
    assert target == tmp_path / "builtin" / "tiny_shapes"
    assert (target / "clip" / "model.safetensors").exists() and not (target / "stale.txt").exists()


def test_refuses_fp32_weights(model_copy):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2, dtype=torch.float32)}, model_copy / "clip" / "model.safetensors")
    with pytest.raises(UserError, match="fp16"):
        check_shippable(model_copy)


def test_refuses_a_folder_without_clip(model_copy):
    shutil.rmtree(model_copy / "clip")
    with pytest.raises(UserError, match="clip"):
        check_shippable(model_copy)


def test_refuses_pickles_and_oversize(model_copy, monkeypatch):
    (model_copy / "unet" / "extra.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="pickle"):
        check_shippable(model_copy)
    (model_copy / "unet" / "extra.bin").unlink()
    monkeypatch.setattr("sdexp.world.ship.MAX_BYTES", 1000)
    with pytest.raises(UserError, match="15 MB"):
        check_shippable(model_copy)
