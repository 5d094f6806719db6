"""LoHa/LoKr files: the LyCORIS names ComfyUI and AUTOMATIC1111 read, a delta by their formula equal to
peft's, and saved → loaded through sdexp's --lora path (generate, eval, export-model) giving the
in-memory model's image."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from lora_helpers import base_image_of
from lora_helpers import file_test_image as image
from peft import inject_adapter_in_model
from safetensors import safe_open
from safetensors.torch import save_file

from sdexp.errors import UserError
from sdexp.export.lycoris import adapter_config, load_lycoris, lycoris_layers, save_lycoris
from sdexp.generate import check_loras, load_loras
from sdexp.inspect import inspect_lora
from sdexp.models.loading import load_base
from sdexp.models.lora_targets import text_encoder_lora_targets, unet_lora_targets

pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(algo, model, targets, rank, alpha, te_rank=None, te_alpha=None, **lokr):
    """A tiny base with LoHa/LoKr injected the way training injects it, every factor random."""
    base = load_base(model)
    torch.manual_seed(0)
    config = adapter_config(
        algo, rank=rank, alpha=alpha, targets=unet_lora_targets(base.unet, targets), **lokr
    )
    base.unet.add_adapter(config)
    te_configs = []
    for encoder in base.text_encoders if te_rank else ():
        config = adapter_config(
            algo, rank=te_rank, alpha=te_alpha, targets=text_encoder_lora_targets(encoder), **lokr
        )
        inject_adapter_in_model(config, encoder, adapter_name="default")
        te_configs.append(config)
    g = torch.Generator().manual_seed(1)
    for module in base.modules:
        for name, p in module.named_parameters():
            if ".hada_" in name or ".lokr_" in name:
                p.data = torch.randn(p.shape, generator=g) * (0.3 if algo == "loha" else 0.1)
    return base, te_configs


def save(base, te_configs, out_dir, targets, rank, alpha, te_rank=None, te_alpha=None):
    n = len(te_configs)
    return save_lycoris(
        out_dir,
        unet=base.unet,
        unet_config=base.unet.peft_config["default"],
        text_encoders=tuple(zip(base.text_encoders, te_configs)),
        family=base.family,
        prediction_type=base.prediction_type,
        rank=rank,
        alpha=alpha,
        text_encoder_ranks=(te_rank,) * n,
        text_encoder_alphas=(te_alpha,) * n,
        resolution=64,
        steps=10,
        title="test-lycoris",
        targets=targets,
        base_model=base.name,
    )


def read(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def comfyui_delta(t: dict[str, torch.Tensor], shape) -> torch.Tensor:
    """ΔW as ComfyUI and A1111 compute it from one module's LyCORIS tensors (the documented math)."""
    if "hada_w1_a" in t:  # LoHa: Hadamard product of two low-rank products, scale alpha / r
        r = t["hada_w1_b"].shape[0]
        scale = float(t["alpha"]) / r if "alpha" in t else 1.0
        w = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        return (w * scale).reshape(shape)
    rank = None  # LoKr: Kronecker product; alpha / r only when some factor is low-rank
    if "lokr_w1" in t:
        w1 = t["lokr_w1"]
    else:
        w1, rank = t["lokr_w1_a"] @ t["lokr_w1_b"], t["lokr_w1_b"].shape[0]
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
    else:
        w2, rank = t["lokr_w2_a"] @ t["lokr_w2_b"], t["lokr_w2_b"].shape[0]
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    scale = float(t["alpha"]) / rank if rank is not None and "alpha" in t else 1.0
    return (torch.kron(w1, w2) * scale).reshape(shape)


HADA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
FULL, LOW_W2, LOW_BOTH = (
    ("lokr_w1", "lokr_w2"),
    ("lokr_w1", "lokr_w2_a", "lokr_w2_b"),
    ("lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b"),
)
DELTA_CASES = [
    # (algo, rank, alpha, lokr options, how many of the tiny UNet's 128 layers get each tensor layout)
    ("loha", 4, 2.0, {}, {HADA: 128}),
    ("lokr", 4, 2.0, {}, {FULL: 93, LOW_W2: 35}),  # both factors full: peft's scale baked into w1
    ("lokr", 1, 3.0, {"decompose_both": True}, {LOW_BOTH: 128}),
    ("lokr", 4, 2.0, {"factor": 4}, {FULL: 35, LOW_W2: 93}),  # method.lokr_factor reaches peft
]


@pytest.mark.parametrize("algo,rank,alpha,lokr,layouts", DELTA_CASES)
def test_comfyui_formula_on_the_file_gives_peft_delta(
    tmp_path, monkeypatch, algo, rank, alpha, lokr, layouts
):
    """For every module (linear, 1x1 and 3x3 conv, text encoder), ComfyUI's ΔW from the saved
    tensors equals peft's get_delta_weight: the file means what the trained model does."""
    base, te_configs = make_model(algo, "tiny", "all", rank, alpha, 2, 3.0, **lokr)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    paths = save(base, te_configs, tmp_path, "all", rank, alpha, 2, 3.0)
    again = save(base, te_configs, tmp_path / "again", "all", rank, alpha, 2, 3.0)
    assert all(paths[k].read_bytes() == again[k].read_bytes() for k in paths)  # reproducible bytes
    tensors, meta = read(paths["kohya"])
    family, unet_config = base.family, dict(base.unet.config)
    parts = [(base.unet, lambda m: family.kohya_unet_name(m, unet_config))]
    parts.append((base.text_encoders[0], lambda m: family.kohya_te_name(0, m)))
    names = set()
    for model, namer in parts:
        for module in lycoris_layers(model):
            layer, name = model.get_submodule(module), namer(module)
            names.add(name)
            mine = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.rsplit(".", 1)[0] == name}
            assert "alpha" in mine
            expected = layer.get_delta_weight("default")
            assert expected.abs().max() > 0
            torch.testing.assert_close(
                comfyui_delta(mine, layer.get_base_layer().weight.shape),
                expected,
                atol=1e-6,
                rtol=1e-5,
                msg=name,
            )
    assert {k.rsplit(".", 1)[0] for k in tensors} == names  # nothing else in the file
    assert len(names) == 128 + 12
    unet_layouts: dict[str, set] = {}
    for key in tensors:
        if key.startswith("lora_unet_") and not key.endswith(".alpha"):
            unet_layouts.setdefault(key.rsplit(".", 1)[0], set()).add(key.rsplit(".", 1)[1])
    assert Counter(tuple(sorted(v)) for v in unet_layouts.values()) == layouts
    # sdexp's reader rebuilds exactly these deltas in a fresh model, for both files
    for path in paths.values():
        pipe = load_base("tiny").pipeline()
        assert load_lycoris(pipe, path, "x", family) == len(names)
        for model, fresh in ((base.unet, pipe.unet), (base.text_encoders[0], pipe.text_encoder)):
            for module in lycoris_layers(model):
                torch.testing.assert_close(
                    fresh.get_submodule(module).get_delta_weight("x"),
                    model.get_submodule(module).get_delta_weight("default"),
                    atol=1e-6,
                    rtol=1e-5,
                )
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"])["algo"] == algo
    assert json.loads(meta["ss_network_args"])["conv_dim"] == str(rank)


# Names ComfyUI's kohya key map gives these layers (SD 1.x: diffusers paths; SDXL: SGM blocks).
EXPECTED_KEYS = {
    ("loha", "tiny"): [
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.hada_w1_a",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.hada_w1_b",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.hada_w2_a",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.hada_w2_b",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha",
        "lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.hada_w2_b",
        "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_ff_net_0_proj.hada_w1_b",
        "lora_unet_down_blocks_0_resnets_0_conv1.hada_w1_a",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.hada_w1_a",
        "lora_te_text_model_encoder_layers_1_mlp_fc2.alpha",
    ],
    ("lokr", "tiny_sdxl"): [
        "lora_unet_input_blocks_4_1_proj_in.lokr_w1",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lokr_w1",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lokr_w2",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.alpha",
        "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_v.lokr_w1",
        "lora_unet_output_blocks_0_1_transformer_blocks_1_ff_net_2.lokr_w2_a",
        "lora_te1_text_model_encoder_layers_0_self_attn_k_proj.lokr_w1",
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lokr_w1",
    ],
}

ROUND_TRIPS = [
    ("loha", "tiny", "all", 4, 2.0, {}),
    ("lokr", "tiny_sdxl", "transformer", 4, 2.0, {}),  # SGM names, lora_te1 + lora_te2
]


@pytest.mark.parametrize(
    "algo,model,targets,rank,alpha,lokr", ROUND_TRIPS, ids=[f"{c[0]}-{c[1]}" for c in ROUND_TRIPS]
)
def test_saved_files_load_and_give_the_in_memory_image(tmp_path, algo, model, targets, rank, alpha, lokr):
    """Both files (LyCORIS and peft) load through `sdexp generate`'s --lora path with every module
    matched and give the in-memory image; scale 0 and unloading give the base's; fusing (what
    export-model --lora does) gives the adapter's image without adapter layers."""
    from sdexp.export.model_files import merge_loras

    lycoris, te_configs = make_model(algo, model, targets, rank, alpha, 2, 3.0, **lokr)
    family = lycoris.family
    expected_image = image(lycoris.pipeline())
    base_image = base_image_of(model)
    assert np.abs(expected_image - base_image).max() > 1e-3, "the adapter must change the image"
    paths = save(lycoris, te_configs, tmp_path, targets, rank, alpha, 2, 3.0)
    assert paths == {
        "kohya": tmp_path / "lora.safetensors",
        "peft": tmp_path / "peft" / "adapter_model.safetensors",
    }
    modules = len(lycoris_layers(lycoris.unet)) + sum(len(lycoris_layers(e)) for e in lycoris.text_encoders)
    for kind, fmt in (("kohya", "lycoris"), ("peft", "peft")):
        (spec,) = check_loras([(paths[kind], 1.0)])
        assert (spec.format, spec.modules, spec.family) == (fmt, modules, family.name)
        pipe = load_base(model).pipeline()
        load_loras(pipe, [spec], family)  # raises unless every module matched
        np.testing.assert_allclose(image(pipe), expected_image, atol=1e-4, err_msg=kind)
        if kind == "kohya":
            pipe.set_adapters(spec.name, 0.0)
            np.testing.assert_allclose(image(pipe), base_image, atol=1e-5)
            pipe.unload_lora_weights()  # what `sdexp eval` does between checkpoints
            np.testing.assert_allclose(image(pipe), base_image, atol=1e-5)
    if model == "tiny":
        merged = load_base(model)
        merge_loras(merged, [(paths["kohya"], 1.0)])
        assert not any(
            ".hada_" in n or ".lokr_" in n for m in merged.modules for n, _ in m.named_parameters()
        )
        np.testing.assert_allclose(image(merged.pipeline()), expected_image, atol=1e-4)

    keys = set(read(paths["kohya"])[0])
    if (algo, model) in EXPECTED_KEYS:
        missing = [k for k in EXPECTED_KEYS[algo, model] if k not in keys]
        assert not missing, missing
    info = inspect_lora(paths["kohya"])
    assert info["format"] == "lycoris" and info["family"] == family.name
    assert sum(info["modules"].values()) == modules
    # LoKr layers with both factors full are written as LyCORIS writes them: alpha = rank (scale 1)
    assert set(info["alphas"]["unet"]) - {float(rank)} == {alpha}


def test_unreadable_files_fail_in_one_line(tmp_path):
    """A module the model lacks, or a Tucker conv, is a UserError naming the file, not a traceback."""
    base, configs = make_model("loha", "tiny", "attn", 2, 2.0)
    path = save(base, configs, tmp_path / "a", "attn", 2, 2.0)["kohya"]
    tensors, meta = read(path)
    renamed = {k.replace("attn1_to_q", "attn1_to_x"): v for k, v in tensors.items()}
    save_file(renamed, tmp_path / "bad.safetensors", metadata=meta)
    tucker = {
        **tensors,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.hada_t1": torch.ones(1),
    }
    save_file(tucker, tmp_path / "tucker.safetensors", metadata=meta)
    for name, fragment in (("bad", "attn1_to_x' matches no layer"), ("tucker", "Tucker")):
        pipe = load_base("tiny").pipeline()
        with pytest.raises(UserError, match=fragment) as err:
            load_loras(pipe, check_loras([(tmp_path / f"{name}.safetensors", 1.0)]), base.family)
        assert "\n" not in str(err.value) and f"{name}.safetensors" in str(err.value)
