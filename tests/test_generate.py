"""generate(): PNGs with A1111 parameters, seed per image, kohya and diffusers LoRAs, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from PIL import Image

from sdexp.errors import UserError
from sdexp.export.lora_files import addnet_hash_file, save_lora
from sdexp.generate import generate
from sdexp.models.loading import load_base
from sdexp.models.lora_targets import text_encoder_lora_targets, unet_lora_targets
from sdexp.png_info import format_parameters, parse_lora_hashes, parse_parameters, read_parameters, write_png

pytestmark = pytest.mark.usefixtures("one_thread")


def _save_tiny_lora(out_dir, targets, te: bool, seed: int):
    base = load_base("tiny")
    torch.manual_seed(seed)
    base.unet.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=unet_lora_targets(base.unet, targets)))
    if te:
        config = LoraConfig(
            r=4, lora_alpha=2, target_modules=text_encoder_lora_targets(base.text_encoders[0])
        )
        inject_adapter_in_model(config, base.text_encoders[0])
    for module in (base.unet, *base.text_encoders):
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.data = torch.randn(p.shape) * 0.1
    return save_lora(
        out_dir,
        unet=base.unet,
        text_encoders=base.text_encoders if te else (),
        family=base.family,
        prediction_type=base.prediction_type,
        rank=4,
        alpha=2,
        text_encoder_ranks=(4,) if te else (),
        text_encoder_alphas=(2,) if te else (),
        resolution=64,
        steps=1,
        title="t",
        targets=targets,
        base_model="tiny",
    )


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    style = _save_tiny_lora(root / "style", "transformer", te=True, seed=1)
    subject = _save_tiny_lora(root / "subject", "all", te=False, seed=2)
    return {"kohya": style["kohya"], "diffusers": subject["diffusers"]}


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


GEN = dict(
    model="tiny", prompt="a red, round thing", negative="blurry", steps=2, guidance=5.0, width=64, height=64
)


def test_pngs_carry_parameters_and_seeds(tmp_path, loras):
    paths = generate(
        loras=[(loras["kohya"], 0.8), (loras["diffusers"], 0.5)],
        seed=7,
        n=2,
        scheduler="euler_a",
        out_dir=tmp_path / "a",
        **GEN,
    )
    assert [p.name for p in paths] == ["00000-7.png", "00001-8.png"]
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            assert im.size == (64, 64) and im.format == "PNG"
        info = parse_parameters(read_parameters(path))
        assert info["prompt"] == "a red, round thing" and info["negative_prompt"] == "blurry"
        params = info["params"]
        assert params["Seed"] == str(7 + i) and params["Steps"] == "2" and params["Sampler"] == "Euler a"
        assert params["CFG scale"] == "5" and params["Size"] == "64x64" and params["Model"] == "tiny"
        hashes = parse_lora_hashes(params["Lora hashes"])
        assert hashes == {
            "style": addnet_hash_file(loras["kohya"])[:12],
            "subject": addnet_hash_file(loras["diffusers"])[:12],
        }
        assert params["Lora scales"] == "style: 0.8, subject: 0.5"

    # Same seed, same pixels; image i is the image of seed + i made on its own; a rerun appends.
    again = generate(
        loras=[(loras["kohya"], 0.8), (loras["diffusers"], 0.5)],
        seed=8,
        n=1,
        scheduler="euler_a",
        out_dir=tmp_path / "a",
        **GEN,
    )
    assert again[0].name == "00002-8.png"
    np.testing.assert_array_equal(pixels(again[0]), pixels(paths[1]))
    assert np.abs(pixels(paths[0]) - pixels(paths[1])).max() > 0


def test_loras_change_the_image(tmp_path, loras):
    plain = generate(seed=3, scheduler="euler", out_dir=tmp_path / "plain", **GEN)[0]
    for kind in ("kohya", "diffusers"):
        with_lora = generate(
            loras=[(loras[kind], 1.0)], seed=3, scheduler="euler", out_dir=tmp_path / kind, **GEN
        )[0]
        assert np.abs(pixels(with_lora) - pixels(plain)).max() > 2, kind
        zero = generate(
            loras=[(loras[kind], 0.0)], seed=3, scheduler="euler", out_dir=tmp_path / f"{kind}0", **GEN
        )[0]
        np.testing.assert_array_equal(pixels(zero), pixels(plain))


@pytest.mark.parametrize("scheduler,sampler", [("dpmpp_2m", "DPM++ 2M"), ("ddim", "DDIM")])
def test_schedulers(tmp_path, scheduler, sampler):
    path = generate(seed=3, scheduler=scheduler, out_dir=tmp_path, **GEN)[0]
    assert parse_parameters(read_parameters(path))["params"]["Sampler"] == sampler


def test_lora_folder_is_accepted(tmp_path, loras):
    paths = generate(loras=[(loras["kohya"].parent, 1.0)], seed=1, out_dir=tmp_path, **GEN)
    assert "style" in parse_parameters(read_parameters(paths[0]))["params"]["Lora hashes"]


def test_bad_loras_are_user_errors(tmp_path, loras):
    def run(path):
        return generate(loras=[(path, 1.0)], seed=1, out_dir=tmp_path / "out", **GEN)

    with pytest.raises(UserError, match="does not exist"):
        run(tmp_path / "missing.safetensors")
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(UserError, match="pickle"):
        run(pickle)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        run(garbage)
    from safetensors.torch import save_file

    model_like = tmp_path / "model.safetensors"
    save_file({"conv_in.weight": torch.zeros(2, 2)}, model_like)
    with pytest.raises(UserError, match="not a LoRA"):
        run(model_like)
    foreign = tmp_path / "foreign.safetensors"  # kohya names of modules the model does not have
    save_file(
        {
            "lora_unet_nothing_here.lora_down.weight": torch.zeros(2, 8),
            "lora_unet_nothing_here.lora_up.weight": torch.zeros(8, 2),
        },
        foreign,
    )
    with pytest.raises(UserError, match="foreign.safetensors"):
        run(foreign)
    with pytest.raises(UserError, match="scheduler"):
        generate(seed=1, scheduler="plms", out_dir=tmp_path, **GEN)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_png_info_round_trip(tmp_path):
    text = format_parameters(
        "line one\nline two",
        "bad, ugly",
        steps=30,
        sampler="DPM++ 2M",
        cfg_scale=7.5,
        seed=1,
        width=512,
        height=768,
        model="sd15",
        lora_hashes={"a": "0123456789ab"},
    )
    assert text.endswith(
        "Steps: 30, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 1, Size: 512x768, Model: sd15, "
        'Lora hashes: "a: 0123456789ab"'
    )
    path = write_png(Image.new("RGB", (8, 8)), tmp_path / "x.png", text)
    assert read_parameters(path) == text
    info = parse_parameters(text)
    assert info["prompt"] == "line one\nline two"
    assert info["negative_prompt"] == "bad, ugly"
    assert info["params"]["Size"] == "512x768"
    assert parse_lora_hashes(info["params"]["Lora hashes"]) == {"a": "0123456789ab"}
    assert parse_parameters("just a prompt") == {
        "prompt": "just a prompt",
        "negative_prompt": "",
        "params": {},
    }
    assert (
        read_parameters(write_png(Image.new("RGB", (8, 8)), tmp_path / "y.png", "ünïcode ✓")) == "ünïcode ✓"
    )
