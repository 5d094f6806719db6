"""The model family is the seam: one registry, real names on the real architectures, micro-conditioning
as SDXL's own pipeline builds it, single files in and out, and no family named outside the families."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sdexp.errors import UserError
from sdexp.models.families import FAMILIES, folder_family, get_family
from sdexp.models.loading import load_base, model_family, resolve_model
from sdexp.models.lora_targets import text_encoder_lora_targets, unet_lora_targets
from sdexp.models.meta import build_meta

REPO = Path(__file__).resolve().parents[2]
TINY = {"tiny": "sd1", "tiny_sd2": "sd2", "tiny_sdxl": "sdxl"}


@pytest.mark.parametrize("model,family", TINY.items())
def test_each_tiny_model_is_its_family(model, family):
    folder = resolve_model(model)
    assert folder_family(folder) is FAMILIES[family]
    base = load_base(model)
    fam = base.family
    assert fam.name == family and base.native_resolution == 64
    assert len(base.text_encoders) == len(base.tokenizers) == len(fam.text_encoders)
    assert type(base.pipeline()).__name__ == fam.pipeline_class_name
    assert base.vae.config.scaling_factor == pytest.approx(fam.vae_scaling_factor)
    assert base.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    pads = [t.pad_token for t in base.tokenizers]
    assert pads == {"sd1": ["<|endoftext|>"], "sd2": ["!"], "sdxl": ["<|endoftext|>", "!"]}[family]


def test_a_family_that_disagrees_with_the_model_is_one_clear_error():
    with pytest.raises(
        UserError, match=r"model.family: sd1 was asked for, but .* is an SDXL model; set model.family=sdxl"
    ):
        model_family(resolve_model("tiny_sdxl"), "sd1")
    with pytest.raises(UserError, match="unknown family"):
        get_family("sd3")


def test_encodings_match_each_pipeline_s_own():
    """Conditioning equals what the family's diffusers pipeline feeds its UNet (SDXL: penultimate
    states of both encoders concatenated, pooled output of the second)."""
    for model in TINY:
        base = load_base(model)
        pipe = base.pipeline()
        with torch.no_grad():
            ours = base.encode(["a red star", "a blue ring"])
            if base.family.name == "sdxl":
                embeds, _, pooled, _ = pipe.encode_prompt(
                    ["a red star", "a blue ring"], do_classifier_free_guidance=False
                )
                torch.testing.assert_close(ours.pooled, pooled, rtol=0, atol=0)
                assert ours.embeddings.shape[-1] == sum(e.config.hidden_size for e in base.text_encoders)
            else:
                embeds, _ = pipe.encode_prompt(["a red star", "a blue ring"], "cpu", 1, False)
                assert ours.pooled is None
        torch.testing.assert_close(ours.embeddings, embeds, rtol=0, atol=0)


def test_sdxl_time_ids_follow_each_item_and_equal_the_pipeline_s():
    """Two items of one batch with different original sizes and crops get different time ids, each
    equal to what StableDiffusionXLPipeline builds for an image of that geometry."""
    base = load_base("tiny_sdxl")
    pipe, family = base.pipeline(), base.family
    text = base.encode(["a red star", "a red star"])
    geometry = {
        "original_size": torch.tensor([[768, 1024], [512, 512]]),
        "crop_top_left": torch.tensor([[0, 128], [32, 0]]),
        "target_size": torch.tensor([[64, 64], [64, 64]]),
    }
    cond = family.condition(text, geometry)
    assert cond.time_ids.shape == (2, 6) and not torch.equal(cond.time_ids[0], cond.time_ids[1])
    projection = base.text_encoders[1].config.projection_dim
    for i in range(2):
        expected = pipe._get_add_time_ids(
            tuple(geometry["original_size"][i].tolist()),
            tuple(geometry["crop_top_left"][i].tolist()),
            tuple(geometry["target_size"][i].tolist()),
            dtype=torch.float32,
            text_encoder_projection_dim=projection,
        )
        torch.testing.assert_close(cond.time_ids[i : i + 1], expected)
    kwargs = cond.unet_kwargs()
    assert set(kwargs["added_cond_kwargs"]) == {"text_embeds", "time_ids"}
    with torch.no_grad():  # and the UNet takes them
        out = base.unet(torch.zeros(2, 4, 8, 8), torch.tensor([10, 10]), **kwargs).sample
    assert out.shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="original size"):
        family.condition(text, None)


@pytest.fixture(scope="module")
def sdxl_meta():
    return build_meta("sdxl", ("unet", "text_encoder", "text_encoder_2"))


def test_sdxl_kohya_names_are_sd_scripts_names(sdxl_meta):
    family = get_family("sdxl")
    unet = sdxl_meta["unet"]
    config = dict(unet.config)
    names = [family.kohya_unet_name(m, config) for m in unet_lora_targets(unet, "transformer")]
    assert len(names) == len(set(names)) == 722
    for expected in (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_4_1_proj_in",
        "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2",
        "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_out_0",
    ):
        assert expected in names
    assert not any("down_blocks" in n or "up_blocks" in n or "mid_block" in n for n in names)
    te1 = [family.kohya_te_name(0, m) for m in text_encoder_lora_targets(sdxl_meta["text_encoder"])]
    te2 = [family.kohya_te_name(1, m) for m in text_encoder_lora_targets(sdxl_meta["text_encoder_2"])]
    assert len(set(te1)) == 72 and all(n.startswith("lora_te1_text_model_encoder_layers_") for n in te1)
    assert len(set(te2)) == 192 and all(n.startswith("lora_te2_text_model_encoder_layers_") for n in te2)
    assert "lora_te1_text_model_encoder_layers_11_mlp_fc2" in te1
    assert "lora_te2_text_model_encoder_layers_31_self_attn_q_proj" in te2


def test_sd21_and_sd15_module_counts():
    sd21 = build_meta("sd21", ("unet", "text_encoder"))
    family = get_family("sd2")
    config = dict(sd21["unet"].config)
    names = {family.kohya_unet_name(m, config) for m in unet_lora_targets(sd21["unet"], "transformer")}
    assert len(names) == 192 and "lora_unet_down_blocks_0_attentions_0_proj_in" in names
    te = {family.kohya_te_name(0, m) for m in text_encoder_lora_targets(sd21["text_encoder"])}
    assert len(te) == 138 and "lora_te_text_model_encoder_layers_22_mlp_fc2" in te
    sd15 = build_meta("sd15", ("unet", "text_encoder"))
    sd1 = get_family("sd1")
    assert len({sd1.kohya_unet_name(m, {}) for m in unet_lora_targets(sd15["unet"], "transformer")}) == 192
    assert len({sd1.kohya_te_name(0, m) for m in text_encoder_lora_targets(sd15["text_encoder"])}) == 72


def test_lora_metadata_names_the_family():
    assert get_family("sd2").lora_metadata("v_prediction") == {
        "ss_base_model_version": "sd_v2",
        "ss_v2": "True",
        "ss_v_parameterization": "True",
        "modelspec.architecture": "stable-diffusion-v2-768-v/lora",
    }
    assert (
        get_family("sd2").lora_metadata("epsilon")["modelspec.architecture"] == "stable-diffusion-v2-512/lora"
    )
    xl = get_family("sdxl").lora_metadata("epsilon")
    assert xl["ss_base_model_version"] == "sdxl_base_v1-0" and xl["ss_v2"] == "False"
    assert xl["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"


# ---------------------------------------------------------------- single files


@pytest.fixture(scope="module")
def single_files(tmp_path_factory):
    from sdexp.export.model_files import export_model

    out = tmp_path_factory.mktemp("single")
    return {m: export_model(m, out / f"{m}.safetensors", fmt="single-file") for m in TINY}


def _fresh(base):
    """Weights in fresh memory: CPU matmuls round by memory layout (see test_single_file)."""
    for module in base.modules:
        for p in module.parameters():
            p.data = p.data.clone()
    return base


@pytest.mark.parametrize("model", TINY)
def test_a_single_file_loads_back_exactly(single_files, model):
    from sdexp.base_generations import SamplingSettings, generate_images
    from sdexp.inspect import read_safetensors_header

    path = single_files[model]
    header, metadata, _ = read_safetensors_header(path)
    family = get_family(TINY[model])
    prefixes = {family.unet_prefix, family.vae_prefix, *(s.single_file_prefix for s in family.text_encoders)}
    assert {next(p for p in prefixes if k.startswith(p)) for k in header} == prefixes  # original layout
    assert metadata["modelspec.architecture"] == family.architecture(load_base(model).prediction_type)
    folder, file = _fresh(load_base(model)), _fresh(load_base(path))
    assert file.family is folder.family and file.prediction_type == folder.prediction_type
    for a, b in zip(folder.modules, file.modules, strict=True):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    settings = SamplingSettings(steps=2)
    images = [
        np.asarray(generate_images(b.pipeline(), ["a red star"], [3], settings, 64)[0])
        for b in (folder, file)
    ]
    np.testing.assert_array_equal(images[0], images[1])


def test_fp16_single_file_halves_and_loads(single_files, tmp_path):
    from sdexp.export.model_files import export_model

    half = export_model("tiny", tmp_path / "half.safetensors", fmt="single-file", dtype="fp16")
    assert half.stat().st_size < 0.6 * single_files["tiny"].stat().st_size
    base = load_base(half)
    assert base.family.name == "sd1"
    torch.testing.assert_close(
        base.unet.conv_in.weight, load_base("tiny").unet.conv_in.weight.half().float(), rtol=0, atol=0
    )


def test_files_that_are_not_base_models_are_one_line(tmp_path, single_files):
    from safetensors.torch import save_file

    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4)}, lora)
    vae = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(1), "decoder.conv_out.weight": torch.zeros(1)}, vae)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    cases = [
        (lora, "a LoRA, not a base model"),
        (vae, "a VAE alone"),
        (junk, "not"),
        (ckpt, "model.allow_pickle=true"),
    ]
    for path, fragment in cases:
        with pytest.raises(UserError, match=re.escape(fragment)) as info:
            resolve_model(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_export_model_merges_a_lora(tmp_path):
    """A base with a LoRA merged in, as one file: the same image as the base with the LoRA loaded."""
    from lora_helpers import tiny_lora_file

    from sdexp.base_generations import SamplingSettings, generate_images
    from sdexp.export.model_files import export_model
    from sdexp.generate import check_loras, load_loras

    lora = tiny_lora_file(tmp_path / "lora", "tiny_sdxl")
    merged = export_model(
        "tiny_sdxl", tmp_path / "merged.safetensors", fmt="single-file", loras=[(lora, 1.0)]
    )
    settings = SamplingSettings(steps=2)
    base = load_base("tiny_sdxl")
    pipe = base.pipeline()
    load_loras(pipe, check_loras([(lora, 1.0)]), base.family)
    with_lora = np.asarray(generate_images(pipe, ["a red star"], [1], settings, 64)[0], dtype=float)
    fused = np.asarray(
        generate_images(load_base(merged).pipeline(), ["a red star"], [1], settings, 64)[0], dtype=float
    )
    plain = np.asarray(
        generate_images(load_base("tiny_sdxl").pipeline(), ["a red star"], [1], settings, 64)[0], dtype=float
    )
    assert np.abs(with_lora - plain).max() > 5  # the LoRA shows
    assert np.abs(with_lora - fused).max() <= 2  # merged = loaded, up to fp32 rounding of W + BA


# ---------------------------------------------------------------- the seam holds


def test_nothing_outside_the_families_names_a_family():
    """Pipeline classes, text-encoder classes and kohya text-encoder prefixes appear only in
    sdexp/models/ (where the families and their loaders live)."""
    pattern = re.compile(r"StableDiffusion(XL)?Pipeline|CLIPTextModel|lora_te\d?\b|lora_te\d?_")
    offenders = []
    for path in sorted((REPO / "sdexp").rglob("*.py")):
        if (REPO / "sdexp" / "models") in path.parents:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_inspect_tells_a_checkpoint_file(single_files):
    from sdexp.inspect import inspect_path

    info = inspect_path(single_files["tiny_sdxl"])
    assert info["kind"] == "model" and info["format"] == "single-file" and info["family"] == "sdxl"
    assert set(info["components"]) == {"unet", "vae", "text_encoder", "text_encoder_2"}
    assert info["resolution"] == 64 and info["prediction_type"] == "epsilon"
    folder = load_base("tiny_sdxl")
    assert info["components"]["unet"]["params"] == sum(p.numel() for p in folder.unet.parameters())


def test_zero_terminal_snr_needs_v_prediction():
    base = load_base("tiny_sd2", zero_terminal_snr=True)  # v-prediction, like SD 2.1 768
    alphas = base.noise_scheduler.alphas_cumprod
    assert float(alphas[-1]) < 1e-6 < float(load_base("tiny_sd2").noise_scheduler.alphas_cumprod[-1])
    from sdexp.samplers import make_scheduler

    assert make_scheduler("dpmpp_2m", base.noise_scheduler.config).config.timestep_spacing == "trailing"
    with pytest.raises(UserError, match="needs v-prediction"):
        load_base("tiny", zero_terminal_snr=True)
