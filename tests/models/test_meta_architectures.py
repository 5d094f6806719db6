"""The shipped configs build the released architectures: parameter counts of the real checkpoints,
SD 1.5 values shared with sd15_meta, scheduler and prediction type per folder."""

from __future__ import annotations

import json

import pytest

from sdexp.models import sd15_meta
from sdexp.models.meta import PARAM_COUNTS, build_meta, parameter_count
from sdexp.models.shipped_configs import CONFIG_NAMES, shipped_dir


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_shipped_configs_build_the_released_parameter_counts(name):
    modules = build_meta(name)
    assert {c: parameter_count(m) for c, m in modules.items()} == PARAM_COUNTS[name]
    assert all(p.is_meta for m in modules.values() for p in m.parameters())


def test_known_sizes():
    assert PARAM_COUNTS["sd21"]["unet"] == 865_910_724
    assert PARAM_COUNTS["sd21"]["text_encoder"] == 340_387_840
    assert PARAM_COUNTS["sdxl"]["unet"] == 2_567_463_684
    assert PARAM_COUNTS["sdxl"]["text_encoder_2"] == 694_659_840


def _json(name, part):
    return json.loads((shipped_dir(name) / part).read_text())


def test_sd15_configs_agree_with_sd15_meta():
    for part, values in (
        ("unet/config.json", sd15_meta.SD15_UNET_CONFIG),
        ("text_encoder/config.json", sd15_meta.SD15_TEXT_CONFIG),
        ("vae/config.json", sd15_meta.SD15_VAE_CONFIG),
    ):
        shipped = _json("sd15", part)
        for key, value in values.items():
            assert shipped[key] == (list(value) if isinstance(value, tuple) else value), (part, key)


def test_each_folder_names_its_scheduler_prediction_and_padding():
    from diffusers import DDPMScheduler

    expected = {"sd15": "epsilon", "sd21": "v_prediction", "sd21_base": "epsilon", "sdxl": "epsilon"}
    for name, prediction in expected.items():
        scheduler = DDPMScheduler.from_pretrained(shipped_dir(name), subfolder="scheduler")
        assert scheduler.config.prediction_type == prediction
        assert scheduler.config.beta_schedule == "scaled_linear"
    assert _json("sd21", "unet/config.json")["sample_size"] * 8 == 768
    assert _json("sd21_base", "unet/config.json")["sample_size"] * 8 == 512
    assert _json("sdxl", "vae/config.json")["scaling_factor"] == 0.13025
    assert _json("sdxl", "tokenizer_2/special_tokens_map.json")["pad_token"] == "!"
    assert _json("sd21", "tokenizer/special_tokens_map.json")["pad_token"] == "!"
    assert _json("sd15", "tokenizer/special_tokens_map.json")["pad_token"] == "<|endoftext|>"
    with pytest.raises(ValueError, match="no shipped config"):
        shipped_dir("sd3")
