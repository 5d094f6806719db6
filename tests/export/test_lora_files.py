"""Saved LoRA files load into a fresh diffusers pipeline and reproduce the in-memory model's images."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from lora_helpers import base_image_of, make_lora_model, save
from lora_helpers import file_test_image as image
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open

from sdexp.export.kohya import from_kohya_state_dict
from sdexp.export.lora_files import addnet_hash_file
from sdexp.models.loading import load_base
from sdexp.models.lora_targets import text_encoder_lora_targets, unet_lora_targets

pytestmark = pytest.mark.usefixtures("one_thread")


def lora_modules(pipe, adapter: str, family) -> tuple[int, ...]:
    def count(model):
        return sum(1 for m in model.modules() if isinstance(m, BaseTunerLayer) and adapter in m.lora_A)

    return (count(pipe.unet), *(count(getattr(pipe, a)) for a in family.text_encoder_attributes))


@pytest.fixture(scope="module")
def base_image():
    return base_image_of("tiny")


CASES = [
    ("tiny", "attn", 4, 4.0, None, None),
    ("tiny", "transformer", 4, 2.0, 2, 3.0),  # alpha ≠ rank on both UNet and text encoder
    ("tiny", "all", 4, 8.0, None, None),  # conv LoRA (3x3 and strided) in resnets and samplers
    ("tiny_sd2", "transformer", 4, 2.0, 2, 3.0),  # linear proj_in/out, OpenCLIP-style encoder
    ("tiny_sd2", "all", 2, 2.0, None, None),
    ("tiny_sdxl", "transformer", 4, 2.0, 2, 3.0),  # SGM UNet names, lora_te1 + lora_te2
    ("tiny_sdxl", "all", 2, 4.0, None, None),  # resnets and samplers by their SGM names too
]
# Modules per tiny UNet: (attention leaves, transformer linears, all) and text-encoder linears.
UNET_MODULES = {
    "tiny": {"attn": 7 * 8, "transformer": 7 * 12, "all": 7 * 12 + 44},
    "tiny_sd2": {"transformer": 7 * 12, "all": 7 * 12 + 44},
    # 17 transformer blocks of 10 linears, 11 Transformer2DModels with proj_in/proj_out
    "tiny_sdxl": {"transformer": 17 * 10 + 11 * 2},
}


@pytest.mark.parametrize(
    "model,targets,rank,alpha,te_rank,te_alpha", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_saved_files_reproduce_the_lora_model(tmp_path, model, targets, rank, alpha, te_rank, te_alpha):
    """Each file loads through the family's own diffusers pipeline (StableDiffusionXLPipeline for
    XL) with load_lora_weights, every module matched, and reproduces the in-memory model's image;
    scale 0 gives the base's."""
    base_image = base_image_of(model)
    lora = make_lora_model(targets, rank, alpha, te_rank, te_alpha, model=model)
    family = lora.family
    lora_image = image(lora.pipeline())
    assert np.abs(lora_image - base_image).max() > 1e-3, (
        "the LoRA must change the image for this test to mean anything"
    )
    paths = save(lora, tmp_path, targets, rank, alpha, te_rank, te_alpha)
    assert paths["kohya"] == tmp_path / "lora.safetensors"
    assert paths["diffusers"] == tmp_path / "diffusers" / "pytorch_lora_weights.safetensors"
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["lora.safetensors", "diffusers", paths["diffusers"].name]
    )

    expected = lora_modules(lora.pipeline(), "default", family)
    if targets in UNET_MODULES[model]:
        assert expected[0] == UNET_MODULES[model][targets]
    encoder_layers = [e.config.num_hidden_layers for e in lora.text_encoders]
    assert list(expected[1:]) == [6 * n if te_rank else 0 for n in encoder_layers]
    for kind, path in paths.items():
        pipe = load_base(model).pipeline()
        assert type(pipe).__name__ == family.pipeline_class_name
        pipe.load_lora_weights(str(path), adapter_name="x")
        assert lora_modules(pipe, "x", family) == expected, kind
        if te_rank:  # every text encoder's LoRA, alpha included, arrives intact
            plain = load_base(model)
            with torch.no_grad():
                loaded = family.encode_text(*family.pipeline_text_encoders(pipe), ["a red square"])
                ours = lora.encode(["a red square"])
                reference = plain.encode(["a red square"])
            assert (ours.embeddings - reference.embeddings).abs().max() > 1e-3
            torch.testing.assert_close(loaded.embeddings, ours.embeddings, atol=1e-6, rtol=0)
        np.testing.assert_allclose(image(pipe), lora_image, atol=1e-4, err_msg=kind)
        pipe.set_adapters("x", 0.0)
        np.testing.assert_allclose(image(pipe), base_image, atol=1e-5, err_msg=kind)

    # The kohya file holds exactly what peft's own state dict holds, with the real alphas, under
    # the family's names (sdexp's reader maps them back with the family's namer).
    with safe_open(paths["kohya"], "pt") as f:
        kohya = {k: f.get_tensor(k) for k in f.keys()}
    unet_config = dict(lora.unet.config)
    back = from_kohya_state_dict(
        kohya,
        unet_modules=unet_lora_targets(load_base(model).unet, targets),
        unet_namer=lambda m: family.kohya_unet_name(m, unet_config),
    )
    peft_sd = get_peft_model_state_dict(lora.unet)
    assert back.unet.keys() == peft_sd.keys()
    assert all(torch.equal(back.unet[k], peft_sd[k]) for k in peft_sd)
    assert set(back.unet_alphas.values()) == {alpha}
    te_keys = [k for k in kohya if not k.startswith("lora_unet_")]
    if te_rank:
        for slot in family.text_encoders:
            assert set(back.te_alphas[slot.kohya_prefix].values()) == {te_alpha}
        prefixes = {k.split("_text_model_")[0] for k in te_keys}
        assert prefixes == set(family.text_encoder_kohya_prefixes)
        assert all("_text_model_encoder_layers_" in k for k in te_keys)
    else:
        assert not te_keys
    assert all(t.dtype == torch.float32 for t in kohya.values())


def _header(path) -> dict:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    assert (8 + length) % 8 == 0
    return json.loads(data[8 : 8 + length])


def test_metadata(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    model = make_lora_model("all", 4, 2.0, 2, 3.0)
    paths = save(model, tmp_path, "all", 4, 2.0, 2, 3.0, extra_metadata={"sdexp.run": "trial-7"})
    with safe_open(paths["kohya"], "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "2.0"
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_resolution"] == "(64, 64)"
    assert meta["ss_steps"] == "100"
    assert meta["ss_output_name"] == "test-lora"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "2.0"}
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.implementation"] == "diffusers"
    assert meta["modelspec.title"] == "test-lora"
    assert meta["modelspec.resolution"] == "64x64"
    assert meta["modelspec.date"] == "2023-11-14"
    assert meta["sdexp.targets"] == "all"
    assert meta["sdexp.base_model"] == "tiny"
    assert meta["sdexp.text_encoder_rank"] == "2" and meta["sdexp.text_encoder_alpha"] == "3.0"
    assert meta["sdexp.run"] == "trial-7"
    assert meta["sshs_model_hash"] == addnet_hash_file(paths["kohya"])
    with safe_open(paths["diffusers"], "pt") as f:
        dmeta = f.metadata()
    adapter = json.loads(dmeta["lora_adapter_metadata"])
    assert adapter["unet.r"] == 4 and adapter["unet.lora_alpha"] == 2.0
    assert adapter["text_encoder.r"] == 2 and adapter["text_encoder.lora_alpha"] == 3.0
    assert dmeta["modelspec.architecture"] == "stable-diffusion-v1/lora"


def test_double_save_is_byte_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    model = make_lora_model("transformer", 4, 2.0, 2, 3.0)
    first = save(model, tmp_path / "a", "transformer", 4, 2.0, 2, 3.0)
    second = save(model, tmp_path / "b", "transformer", 4, 2.0, 2, 3.0)
    third = save(model, tmp_path / "a", "transformer", 4, 2.0, 2, 3.0)  # overwrite in place
    for kind in first:
        assert first[kind].read_bytes() == second[kind].read_bytes() == third[kind].read_bytes(), kind
        # Sorted metadata: the bytes do not depend on safetensors' per-process hash-map order.
        meta = _header(first[kind])["__metadata__"]
        assert list(meta) == sorted(meta)
    assert not [p for p in (tmp_path / "a").rglob("*") if p.name.endswith(".tmp")]


def test_half_precision_on_request(tmp_path):
    model = make_lora_model("attn", 2, 2.0)
    paths = save(model, tmp_path, "attn", 2, 2.0, dtype=torch.float16)
    with safe_open(paths["kohya"], "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


def test_metadata_must_match_the_model(tmp_path):
    model = make_lora_model("attn", 4, 2.0)
    with pytest.raises(ValueError, match="rank 4 alpha 2.0, not the rank 8"):
        save(model, tmp_path, "attn", 8, 2.0)
    with pytest.raises(ValueError, match="no LoRA adapter"):
        save(load_base("tiny"), tmp_path, "attn", 4, 2.0)


def test_dora_with_text_encoder_round_trips(tmp_path, base_image):
    """DoRA on UNet and text encoder: the diffusers file reproduces the in-memory images; the kohya
    file carries every module's dora_scale (lora_te_ included) and diffusers' kohya converter maps
    them back to the exact magnitudes."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers

    base = load_base("tiny")
    torch.manual_seed(0)
    base.unet.add_adapter(
        LoraConfig(
            r=2, lora_alpha=2, target_modules=unet_lora_targets(base.unet, "transformer"), use_dora=True
        )
    )
    inject_adapter_in_model(
        LoraConfig(
            r=2, lora_alpha=4, target_modules=text_encoder_lora_targets(base.text_encoders[0]), use_dora=True
        ),
        base.text_encoders[0],
    )
    g = torch.Generator().manual_seed(1)
    for module in base.modules:
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.data = torch.randn(p.shape, generator=g) * 0.1
            if "lora_magnitude_vector" in name:  # a trained magnitude, not its initial value ||W||
                p.data = p.data * (1 + 0.2 * torch.rand(p.shape, generator=g))
    dora_image = image(base.pipeline())
    assert np.abs(dora_image - base_image).max() > 1e-3
    paths = save(base, tmp_path, "transformer", 2, 2.0, te_rank=2, te_alpha=4.0)

    pipe = load_base("tiny").pipeline()
    pipe.load_lora_weights(str(paths["diffusers"]), adapter_name="x")
    np.testing.assert_allclose(image(pipe), dora_image, atol=1e-4)

    with safe_open(paths["kohya"], "pt") as f:
        kohya = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    assert json.loads(metadata["ss_network_args"])["dora_wd"] == "True"
    downs = {k.split(".")[0] for k in kohya if k.endswith("lora_down.weight")}
    scales = {k.split(".")[0] for k in kohya if k.endswith("dora_scale")}
    assert scales == downs and any(n.startswith("lora_te_") for n in scales)
    converted, _ = _convert_non_diffusers_lora_to_diffusers(dict(kohya))
    converted_magnitudes = [v.reshape(-1) for k, v in converted.items() if "lora_magnitude_vector" in k]
    peft_unet = get_peft_model_state_dict(base.unet)
    ours = [
        v
        for k, v in {**peft_unet, **get_peft_model_state_dict(base.text_encoders[0])}.items()
        if "magnitude" in k
    ]
    assert len(converted_magnitudes) == len(ours) == len(scales)
    for magnitude in ours:  # the converter's names differ (attn processors); the values must not
        assert sum(torch.equal(magnitude.reshape(-1), c) for c in converted_magnitudes) >= 1
    back = from_kohya_state_dict(kohya)  # and sdexp's own reader gives peft's tensors back, shapes included
    assert all(torch.equal(back.unet[k], v) for k, v in peft_unet.items())
