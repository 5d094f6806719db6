"""diffusers → original (LDM/SGM) names, checked against diffusers' own converters on the real
architectures (meta device) and on the tiny models of every family."""

from __future__ import annotations

import pytest
import torch

from sdexp.models import ldm_layout as L
from sdexp.models import tiny
from sdexp.models.meta import build_meta

UNET_PREFIX = "model.diffusion_model."
REAL = ("sd15", "sd21", "sdxl")
TINY_UNETS = {"tiny": tiny.UNET_CONFIG, "tiny_sd2": tiny.SD2_UNET_CONFIG, "tiny_sdxl": tiny.SDXL_UNET_CONFIG}


@pytest.fixture(scope="module")
def real():
    return {name: build_meta(name) for name in REAL}


def _tiny_unet(name):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**TINY_UNETS[name])


def _unets(real):
    yield from ((name, real[name]["unet"]) for name in REAL)
    yield from ((name, _tiny_unet(name)) for name in TINY_UNETS)


def test_every_unet_parameter_maps_to_a_distinct_key_that_diffusers_maps_back(real):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    for name, unet in _unets(real):
        config = dict(unet.config)
        sd = unet.state_dict()
        ldm = L.unet_to_ldm(sd, config)
        assert len(ldm) == len(sd), name
        assert all(
            k.startswith(
                ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.")
            )
            for k in ldm
        )
        back = convert_ldm_unet_checkpoint({UNET_PREFIX + k: v for k, v in ldm.items()}, config)
        assert set(back) == set(sd), name
        assert all(back[k] is sd[k] for k in sd), name


def test_named_modules_map_as_the_original_code_names_them(real):
    xl, sd15 = dict(real["sdxl"]["unet"].config), dict(real["sd15"]["unet"].config)
    expected = {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.resnets.1.conv1": "input_blocks.2.0.in_layers.2",
        "down_blocks.0.resnets.0.norm1": "input_blocks.1.0.in_layers.0",
        "down_blocks.1.resnets.0.time_emb_proj": "input_blocks.4.0.emb_layers.1",
        "down_blocks.1.resnets.0.norm2": "input_blocks.4.0.out_layers.0",
        "down_blocks.1.resnets.0.conv2": "input_blocks.4.0.out_layers.3",
        "down_blocks.1.resnets.0.conv_shortcut": "input_blocks.4.0.skip_connection",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "mid_block.attentions.0.proj_in": "middle_block.1.proj_in",
        "mid_block.resnets.1.conv2": "middle_block.2.out_layers.3",
        "up_blocks.0.upsamplers.0.conv": "output_blocks.2.2.conv",
        "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
        "up_blocks.2.resnets.2.conv1": "output_blocks.8.0.in_layers.2",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "down_blocks.1.attentions.0": "input_blocks.4.1",
    }
    for name, original in expected.items():
        assert L.unet_module_to_ldm(name, xl) == original, name
    # SD 1.5: the first up block has no attention, so its upsampler is the block's second module.
    assert L.unet_module_to_ldm("up_blocks.0.upsamplers.0.conv", sd15) == "output_blocks.2.1.conv"
    assert L.unet_module_to_ldm("down_blocks.0.attentions.1.proj_out", sd15) == "input_blocks.2.1.proj_out"
    assert L.unet_module_to_ldm("up_blocks.3.attentions.2.proj_out", sd15) == "output_blocks.11.1.proj_out"
    for bad in ("down_blocks.0", "down_blocks.9.resnets.0.conv1", "down_blocks.0.resnets.0.bogus", "nothing"):
        with pytest.raises(ValueError):
            L.unet_module_to_ldm(bad, xl)


def _lora_modules(unet):
    return [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def test_kohya_sdxl_names_of_the_real_unet(real):
    unet = real["sdxl"]["unet"]
    config = dict(unet.config)
    names = {"lora_unet_" + L.unet_module_to_ldm(m, config).replace(".", "_") for m in _lora_modules(unet)}
    assert {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_4_1_proj_in",
        "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2",
        "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_out_0",
    } <= names
    assert len(names) == len(_lora_modules(unet))


def test_diffusers_lora_loader_maps_the_sgm_names_back(real):
    """diffusers' kohya-SDXL loader renumbers SGM blocks (resnet parts keep their original names)."""
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    inverse_parts = {v.replace(".", "_"): k for k, v in L._UNET_RESNET_PARTS.items()}
    unet = real["sdxl"]["unet"]
    config = dict(unet.config)
    inside_blocks = [
        m for m in _lora_modules(unet) if m.startswith(("down_blocks", "mid_block", "up_blocks"))
    ]
    kohya = {
        f"lora_unet_{L.unet_module_to_ldm(m, config).replace('.', '_')}.lora_down.weight": m
        for m in inside_blocks
    }
    mapped = _maybe_map_sgm_blocks_to_diffusers(dict.fromkeys(kohya), unet.config)
    assert len(mapped) == len(kohya)
    got = set()
    for key in mapped:
        name = key.removeprefix("lora_unet_").removesuffix(".lora_down.weight")
        for sgm, block in (
            ("input_blocks", "down_blocks"),
            ("middle_block", "mid_block"),
            ("output_blocks", "up_blocks"),
        ):
            name = name.replace(sgm, block)  # the loader's next step (_convert_unet_lora_key) renames these
        for original, part in inverse_parts.items():
            name = name.replace(f"_{original}", f"_{part}")
        got.add(name.replace("downsamplers_0_op", "downsamplers_0_conv"))
    assert got == {m.replace(".", "_") for m in inside_blocks}


def test_vae_layout_round_trips_through_diffusers(real):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    torch.manual_seed(0)
    small = AutoencoderKL(**tiny.VAE_CONFIG)
    for vae in (real["sd15"]["vae"], real["sdxl"]["vae"], small):
        sd = vae.state_dict()
        ldm = L.vae_to_ldm(sd, dict(vae.config))
        assert len(ldm) == len(sd)
        back = convert_ldm_vae_checkpoint(
            {"first_stage_model." + k: v for k, v in ldm.items()}, dict(vae.config)
        )
        assert set(back) == set(sd)
        assert all(back[k].shape == sd[k].shape for k in sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)  # the tiny VAE holds real numbers
    ldm = L.vae_to_ldm(real["sd15"]["vae"].state_dict(), dict(real["sd15"]["vae"].config))
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert ldm["decoder.mid.attn_1.proj_out.weight"].shape == (512, 512, 1, 1)
    assert ldm["decoder.up.0.block.0.nin_shortcut.weight"].shape == (128, 256, 1, 1)  # the last up block
    assert ldm["decoder.up.3.upsample.conv.weight"].shape == (512, 512, 3, 3)  # the first up block
    assert ldm["encoder.down.0.downsample.conv.weight"].shape == (128, 128, 3, 3)
    assert {"encoder.norm_out.weight", "decoder.mid.block_2.conv2.bias", "quant_conv.weight"} <= set(ldm)


def test_clip_layout_adds_text_model_whether_or_not_transformers_does():
    sd = {"embeddings.token_embedding.weight": torch.zeros(1), "final_layer_norm.bias": torch.ones(1)}
    flat = L.clip_to_ldm(sd)
    nested = L.clip_to_ldm({"text_model." + k: v for k, v in sd.items()})
    assert (
        flat.keys()
        == nested.keys()
        == {"text_model.embeddings.token_embedding.weight", "text_model.final_layer_norm.bias"}
    )


def _tiny_text(cls, **config):
    from transformers import CLIPTextConfig

    torch.manual_seed(0)
    return cls(CLIPTextConfig(**{**tiny.TEXT_CONFIG, "vocab_size": 100, **config}))


def test_open_clip_layout_round_trips_through_diffusers(real):
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    prefix = "conditioner.embedders.1.model."
    encoders = [
        real["sd21"]["text_encoder"],
        real["sdxl"]["text_encoder_2"],
        _tiny_text(CLIPTextModel, hidden_act="gelu"),
        _tiny_text(CLIPTextModelWithProjection, projection_dim=16),
    ]
    for encoder in encoders:
        projection = getattr(encoder, "text_projection", None)
        ldm = L.open_clip_to_ldm(
            encoder.state_dict(),
            encoder.config.to_dict(),
            projection=None if projection is None else projection.weight,
        )
        layers = encoder.config.num_hidden_layers
        assert f"transformer.resblocks.{layers - 1}.attn.in_proj_weight" in ldm
        assert f"transformer.resblocks.{layers}.ln_1.weight" not in ldm  # nothing synthesised
        assert ("text_projection" in ldm) == (projection is not None)
        back = convert_open_clip_checkpoint(encoder, {prefix + k: v for k, v in ldm.items()}, prefix=prefix)
        back = {k.removeprefix("text_model.") for k in back}
        assert back == {k.removeprefix("text_model.") for k in encoder.state_dict()}
    # real numbers survive the q/k/v fusion and the projection's transpose, width 32 → 16
    sd = encoder.state_dict()
    ldm = L.open_clip_to_ldm(sd, encoder.config.to_dict(), projection=encoder.text_projection.weight)
    assert ldm["text_projection"].shape == (32, 16)
    back = convert_open_clip_checkpoint(encoder, {prefix + k: v for k, v in ldm.items()}, prefix=prefix)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_open_clip_layout_refuses_an_incomplete_or_foreign_state_dict():
    from transformers import CLIPTextModel

    encoder = _tiny_text(CLIPTextModel)
    sd = encoder.state_dict()
    config = encoder.config.to_dict()
    with pytest.raises(ValueError, match="layers.1"):
        L.open_clip_to_ldm({k: v for k, v in sd.items() if ".layers.1." not in k}, config, projection=None)
    with pytest.raises(ValueError, match="no OpenCLIP name"):
        L.open_clip_to_ldm({**sd, "extra.weight": torch.zeros(1)}, config, projection=None)
