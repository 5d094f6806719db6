"""kohya names of SD 1.5's real modules (meta device), and kohya ↔ peft state-dict round trips."""

from __future__ import annotations

import pytest
import torch

from sdexp.export.kohya import (
    from_kohya_state_dict,
    kohya_te_name,
    kohya_unet_name,
    to_kohya_state_dict,
)
from sdexp.models.lora_targets import text_encoder_lora_targets, unet_lora_targets
from sdexp.models.sd15_meta import SD15_TEXT_ENCODER_PARAMS, SD15_UNET_PARAMS, build_sd15_meta


@pytest.fixture(scope="module")
def sd15():
    return build_sd15_meta()


def test_meta_models_are_sd15_sized(sd15):
    unet, te = sd15
    assert next(unet.parameters()).device.type == "meta"
    assert sum(p.numel() for p in unet.parameters()) == SD15_UNET_PARAMS
    assert sum(p.numel() for p in te.parameters()) == SD15_TEXT_ENCODER_PARAMS


def test_transformer_targets_kohya_names(sd15):
    unet, te = sd15
    names = [kohya_unet_name(m) for m in unet_lora_targets(unet, "transformer")]
    te_names = [kohya_te_name(m, "lora_te") for m in text_encoder_lora_targets(te)]
    assert len(names) == len(set(names)) == 192
    assert len(te_names) == len(set(te_names)) == 72
    for expected in (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0",
        "lora_unet_up_blocks_3_attentions_2_proj_out",
        "lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_ff_net_0_proj",
    ):
        assert expected in names
    assert "lora_te_text_model_encoder_layers_11_mlp_fc2" in te_names
    assert "lora_te_text_model_encoder_layers_0_self_attn_out_proj" in te_names
    assert not any("resnets" in n for n in names)


def test_attn_targets_are_16_blocks_of_8(sd15):
    unet, _ = sd15
    names = [kohya_unet_name(m) for m in unet_lora_targets(unet, "attn")]
    assert len(names) == 16 * 8
    assert all(n.endswith(("_to_q", "_to_k", "_to_v", "_to_out_0")) for n in names)


def test_all_targets_add_conv_blocks(sd15):
    unet, _ = sd15
    transformer = {kohya_unet_name(m) for m in unet_lora_targets(unet, "transformer")}
    names = {kohya_unet_name(m) for m in unet_lora_targets(unet, "all")}
    assert transformer < names
    extra = names - transformer
    for expected in (
        "lora_unet_down_blocks_0_resnets_0_conv1",
        "lora_unet_down_blocks_0_resnets_0_conv2",
        "lora_unet_down_blocks_0_resnets_0_time_emb_proj",
        "lora_unet_down_blocks_1_resnets_0_conv_shortcut",
        "lora_unet_down_blocks_0_downsamplers_0_conv",
        "lora_unet_up_blocks_0_upsamplers_0_conv",
        "lora_unet_mid_block_resnets_1_conv2",
    ):
        assert expected in extra
    # 22 resnets × (conv1, conv2, time_emb_proj) + 14 conv_shortcuts + 3 down- and 3 upsamplers
    assert len(extra) == 22 * 3 + 14 + 6


def test_te_name_prefix_is_added_once_and_wrappers_are_dropped():
    assert (
        kohya_te_name("encoder.layers.11.mlp.fc2", "lora_te")
        == "lora_te_text_model_encoder_layers_11_mlp_fc2"
    )
    assert (
        kohya_te_name("text_model.encoder.layers.11.mlp.fc2", "lora_te")
        == "lora_te_text_model_encoder_layers_11_mlp_fc2"
    )
    assert kohya_te_name("encoder.layers.0.self_attn.q_proj", "lora_te1").startswith("lora_te1_text_model_")
    assert (
        kohya_unet_name("_orig_mod.mid_block.attentions.0.proj_in")
        == "lora_unet_mid_block_attentions_0_proj_in"
    )


def _fake_peft(modules, rank=2):
    sd = {}
    for i, m in enumerate(modules):
        sd[f"{m}.lora_A.weight"] = torch.full((rank, 3), float(i))
        sd[f"{m}.lora_B.weight"] = torch.full((5, rank), float(-i))
    return sd


@pytest.mark.parametrize("use_lookup", [True, False], ids=["lookup", "guess"])
def test_round_trip_every_sd15_module(sd15, use_lookup):
    unet, te = sd15
    unet_modules = unet_lora_targets(unet, "all")
    te_modules = text_encoder_lora_targets(te)
    unet_sd, te_sd = _fake_peft(unet_modules), _fake_peft(te_modules)
    kohya = to_kohya_state_dict(unet_sd, {"lora_te": (te_sd, {m: 3.0 for m in te_modules})}, unet_alpha=1.0)
    assert len(kohya) == 3 * (len(unet_modules) + len(te_modules))
    name = kohya_unet_name(unet_modules[0])
    assert torch.equal(kohya[f"{name}.lora_down.weight"], unet_sd[f"{unet_modules[0]}.lora_A.weight"])
    assert torch.equal(kohya[f"{name}.lora_up.weight"], unet_sd[f"{unet_modules[0]}.lora_B.weight"])
    assert kohya[f"{name}.alpha"].shape == () and kohya[f"{name}.alpha"].item() == 1.0
    assert all(t.is_contiguous() for t in kohya.values())

    lookup = dict(
        unet_modules=[n for n, _ in unet.named_modules()], te_modules=[n for n, _ in te.named_modules()]
    )
    back = from_kohya_state_dict(kohya, **(lookup if use_lookup else {}))
    assert back.unet.keys() == unet_sd.keys()
    assert back.text_encoders["lora_te"].keys() == te_sd.keys()  # transformers 5 names: no text_model. prefix
    assert all(torch.equal(back.unet[k], unet_sd[k]) for k in unet_sd)
    assert set(back.unet_alphas.values()) == {1.0}
    assert set(back.te_alphas["lora_te"].values()) == {3.0}
    with_prefix = from_kohya_state_dict(kohya, keep_text_model_prefix=True)
    assert all(k.startswith("text_model.encoder.") for k in with_prefix.text_encoders["lora_te"])


def test_bad_keys_are_rejected():
    with pytest.raises(ValueError, match="not a LoRA or DoRA weight"):
        to_kohya_state_dict({"x.lora_bias.weight": torch.zeros(1)}, unet_alpha=1.0)
    with pytest.raises(ValueError, match="lacks"):
        to_kohya_state_dict({"x.lora_magnitude_vector": torch.zeros(1)}, unet_alpha=1.0)
    with pytest.raises(ValueError, match="lacks"):
        to_kohya_state_dict({"x.lora_A.weight": torch.zeros(1, 1)}, unet_alpha=1.0)
    with pytest.raises(ValueError, match="not a kohya LoRA key"):
        from_kohya_state_dict({"model.diffusion_model.x.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="matches no module"):
        from_kohya_state_dict({"lora_unet_nope.alpha": torch.tensor(1.0)}, unet_modules=["a.b"])
