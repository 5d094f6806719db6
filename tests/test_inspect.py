"""inspect: LoRA files (kohya, diffusers) report format/rank/alpha/targets; model folders their parts."""

from __future__ import annotations

import io
import json

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import save_file

from sdexp.cli import main
from sdexp.errors import UserError
from sdexp.export.kohya import kohya_unet_name
from sdexp.export.lora_files import save_lora
from sdexp.inspect import infer_targets, inspect_path, print_report
from sdexp.models.loading import load_base
from sdexp.models.lora_targets import text_encoder_lora_targets, unet_lora_targets
from sdexp.models.sd15_meta import build_sd15_meta

pytestmark = pytest.mark.usefixtures("isolated_cli_state")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny LoRA (conv targets, text encoder, alpha ≠ rank) saved both ways."""
    base = load_base("tiny")
    torch.manual_seed(0)
    base.unet.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=unet_lora_targets(base.unet, "all")))
    inject_adapter_in_model(
        LoraConfig(r=2, lora_alpha=3, target_modules=text_encoder_lora_targets(base.text_encoders[0])),
        base.text_encoders[0],
    )
    return save_lora(
        tmp_path_factory.mktemp("lora"),
        unet=base.unet,
        text_encoders=base.text_encoders,
        family=base.family,
        prediction_type=base.prediction_type,
        rank=4,
        alpha=2,
        text_encoder_ranks=(2,),
        text_encoder_alphas=(3,),
        resolution=64,
        steps=5,
        title="t",
        targets="all",
        base_model="tiny",
    )


def test_kohya_file(saved):
    info = inspect_path(saved["kohya"])
    assert info["format"] == "kohya"
    assert info["family"] == "sd1"
    assert info["architecture"] == "stable-diffusion-v1/lora"
    assert info["targets"] == "all"
    assert info["ranks"] == {"unet": [4], "text_encoder": [2]}
    assert info["alphas"] == {"unet": [2.0], "text_encoder": [3.0]}
    assert info["modules"] == {"unet": 7 * 12 + 44, "text_encoder": 12}
    assert info["conv_modules"] == 26  # 3x3 convs: 2 per resnet (11) + 4 samplers
    assert info["metadata"]["ss_network_dim"] == "4"
    json.dumps(info)


def test_diffusers_file_and_folders(saved):
    info = inspect_path(saved["diffusers"])
    assert info["format"] == "diffusers"
    assert info["ranks"] == {"unet": [4], "text_encoder": [2]}
    assert info["alphas"] == {"unet": [2.0], "text_encoder": [3.0]}  # from diffusers' adapter metadata
    assert info["modules"] == {"unet": 7 * 12 + 44, "text_encoder": 12}
    assert info["family"] == "sd1"
    assert inspect_path(saved["kohya"].parent)["path"] == str(saved["kohya"])  # a checkpoint folder
    assert inspect_path(saved["diffusers"].parent)["format"] == "diffusers"


def test_targets_are_inferred_without_metadata(tmp_path, saved):
    with safe_open(saved["kohya"], "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, tmp_path / "bare.safetensors")
    info = inspect_path(tmp_path / "bare.safetensors")
    assert info["targets"] == "all" and info["family"] is None and info["metadata"] == {}
    assert info["alphas"]["unet"] == [2.0]  # read from the .alpha tensors


def test_infer_targets_on_sd15_names():
    unet, _ = build_sd15_meta()
    for targets in ("attn", "transformer", "all"):
        names = [kohya_unet_name(n).removeprefix("lora_unet_") for n in unet_lora_targets(unet, targets)]
        assert infer_targets(names) == targets
        assert infer_targets(unet_lora_targets(unet, targets)) == targets
    assert (
        infer_targets(["down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "conv_in"]) == "custom"
    )


def test_model_folder():
    info = inspect_path("tiny")
    base = load_base("tiny")
    assert info["kind"] == "model"
    assert info["family"] == "sd1" and info["prediction_type"] == "epsilon" and info["variant"] is None
    assert info["resolution"] == 64
    assert set(info["components"]) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    for name, module in (("unet", base.unet), ("vae", base.vae), ("text_encoder", base.text_encoders[0])):
        assert info["components"][name]["params"] == sum(p.numel() for p in module.parameters())
    assert info["components"]["unet"]["class"] == "UNet2DConditionModel"
    buffer = io.StringIO()
    print_report(info, Console(file=buffer, width=120))
    assert "UNet2DConditionModel" in buffer.getvalue()


def test_report_and_cli_json(saved, capsys):
    buffer = io.StringIO()
    print_report(inspect_path(saved["kohya"]), Console(file=buffer, width=120))
    assert "rank 4, alpha 2" in buffer.getvalue() and "ss_network_dim" in buffer.getvalue()
    assert main(["inspect", str(saved["kohya"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ranks"]["unet"] == [4]


def test_bad_paths(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        inspect_path(tmp_path / "nope")
    with pytest.raises(UserError, match="neither a model"):
        inspect_path(tmp_path)
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(UserError, match="not a readable safetensors"):
        inspect_path(tmp_path / "x.safetensors")
    (tmp_path / "old.ckpt").write_bytes(b"\x80")
    with pytest.raises(UserError, match="pickle"):
        inspect_path(tmp_path / "old.ckpt")
