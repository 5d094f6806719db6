"""method.adapter_type=loha|lokr: checked at the door, trained through peft, saved as files that load
back (through `sdexp generate`'s --lora path) to the trained model's image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lora_helpers import pipeline_image

from sdexp.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["method.adapter_type=locon"], "method.adapter_type: 'locon' is not one of lora, loha, lokr"),
        (["method.adapter_type=loha", "method.dora=true"], "method.dora: DoRA is a LoRA variant"),
        (
            ["method.adapter_type=lokr", "method.dropout=0.1"],
            "method.dropout: LoRA's input dropout has no LoKr",
        ),
        (["method.adapter_type=lokr", "method.lokr_factor=0"], "method.lokr_factor: must be -1"),
        (
            [
                "method=dreambooth",
                "method.adapter=full",
                "method.adapter_type=loha",
                "method.instance_prompt=a",
                "method.prior_preservation=false",
            ],
            "method.adapter_type: LoHa is an adapter; it needs method.adapter=lora",
        ),
    ],
)
def test_bad_adapter_options_name_the_key(compose, tmp_path, overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        compose(f"data.dir={tmp_path}", "data.prompt=x", *overrides)


def test_adapter_type_composes_for_lora_and_dreambooth(compose, tmp_path):
    cfg = compose(f"data.dir={tmp_path}", "data.prompt=x", "method.adapter_type=lokr", "method.lokr_factor=8")
    assert (cfg.method.adapter_type, cfg.method.lokr_factor, cfg.method.lokr_decompose_both) == (
        "lokr",
        8,
        False,
    )
    cfg = compose(
        f"data.dir={tmp_path}",
        "method=dreambooth",
        "method.instance_prompt=a photo of sks toy",
        "method.prior_preservation=false",
        "method.adapter_type=loha",
    )
    assert (
        cfg.method.adapter_type == "loha"
        and compose(f"data.dir={tmp_path}", "data.prompt=x").method.adapter_type == "lora"
    )


@pytest.mark.parametrize("adapter_type", ["loha", "lokr"])
def test_a_short_run_saves_files_that_give_the_trained_image(compose, toy_images, tmp_path, adapter_type):
    """Conv + attention targets and the text encoder train (only adapter weights change), the
    checkpoint holds the LyCORIS and peft files, and both load to the trained model's image."""
    from peft.tuners.lycoris_utils import LycorisLayer
    from safetensors import safe_open

    from sdexp.generate import check_loras, load_loras
    from sdexp.methods import build_module
    from sdexp.models.loading import load_base
    from sdexp.trainer import Trainer

    cfg = compose(
        "logger=none",
        f"data.dir={toy_images}",
        "data.prompt=a photo of sks toy",
        f"method.adapter_type={adapter_type}",
        "method.targets=all",
        "method.train_text_encoder=true",
        "method.rank=2",
        "train.steps=4",
        "train.lr=1e-2",
    )
    module = build_module(cfg)
    trainer = Trainer(run_dir=tmp_path / "run", max_steps=cfg.train.steps, seed=0, device="cpu")
    trainer.fit(module)
    for m in module.trainable_modules():
        m.eval()
    layers = [
        m for model in module.trainable_modules() for m in model.modules() if isinstance(m, LycorisLayer)
    ]
    assert len(layers) == 128 + 12  # every `all` target of the tiny UNet and every text-encoder linear
    untouched = dict(load_base("tiny").unet.named_parameters())
    for name, p in module.base.unet.named_parameters():
        if ".hada_" not in name and ".lokr_" not in name:
            assert torch.equal(p, untouched[name.replace(".base_layer", "")]), name

    def image(pipe):
        return pipeline_image(pipe, "a photo of sks toy", seed=7)

    trained = image(module.base.pipeline())
    assert np.abs(trained - image(load_base("tiny").pipeline())).max() > 1e-3
    final = tmp_path / "run" / "checkpoints" / "final"
    with safe_open(final / "lora.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya" and meta["sdexp.adapter_type"] == adapter_type
    assert json.loads(meta["ss_network_args"])["algo"] == adapter_type
    for path in (final / "lora.safetensors", final / "peft" / "adapter_model.safetensors"):
        pipe = load_base("tiny").pipeline()
        load_loras(pipe, check_loras([(path, 1.0)]), module.base.family)
        np.testing.assert_allclose(image(pipe), trained, atol=2e-4, err_msg=str(path))
