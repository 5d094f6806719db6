"""The built-in tiny model and the one loading door every base model goes through."""

from __future__ import annotations

import hashlib
import json

import pytest

from sdexp.errors import UserError
from sdexp.models.loading import detect_variant, load_base, resolve_model
from sdexp.models.tiny import build_tiny, ensure_tiny
from sdexp.models.tokenizer import train_clip_tokenizer


def _digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_tiny_builds_byte_identical_every_time(tmp_path):
    a, b = build_tiny(tmp_path / "a"), build_tiny(tmp_path / "b")
    digests = _digest(a)
    assert digests == _digest(b)
    assert {
        "unet/diffusion_pytorch_model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "text_encoder/model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "model_index.json",
    } <= set(digests)
    assert digests == _digest(ensure_tiny())  # the cached copy is the same build


def test_tokenizer_loads_as_clip_and_as_a_tokenizers_bpe(tmp_path):
    from tokenizers import models
    from transformers import CLIPTokenizer

    folder = train_clip_tokenizer(tmp_path / "tok")
    tok = CLIPTokenizer.from_pretrained(folder)
    ids = tok("A photo of SKS dog, on the moon!")["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>"
    assert {"photo</w>", "sks</w>", "dog</w>"} <= set(tokens)
    assert tok.unk_token_id not in ids[1:-1]  # every character is in the vocabulary
    assert tok("zqxj")["input_ids"][1:-1] != [tok.unk_token_id]
    bpe = models.BPE.from_file(
        str(folder / "vocab.json"), str(folder / "merges.txt"), end_of_word_suffix="</w>"
    )
    assert bpe.token_to_id("photo</w>") == tok.convert_tokens_to_ids("photo</w>")


def test_tiny_is_an_sd1_pipeline_that_generates():
    import numpy as np
    import torch

    base = load_base("tiny")
    assert base.family.name == "sd1" and base.native_resolution == 64 and base.prediction_type == "epsilon"
    pipe = base.pipeline()
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a red square",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_bad_model_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_model(tmp_path / "nope")
    with pytest.raises(UserError, match="no model_index.json"):
        resolve_model(tmp_path)
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="lacks"):
        resolve_model(tmp_path)


def test_fp16_only_folders_are_detected_and_pickle_needs_a_flag(tmp_path):
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    assert detect_variant(tmp_path) == "fp16"
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert detect_variant(tmp_path) is None


def test_pickle_only_weights_are_refused_without_the_flag(tmp_path):
    import shutil

    from sdexp.models.families import get_family
    from sdexp.models.loading import _check_safe_weights

    model = shutil.copytree(ensure_tiny(), tmp_path / "m")
    for f in model.rglob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(UserError, match="allow_pickle"):
        _check_safe_weights(model, get_family("sd1"), None, allow_pickle=False)
    _check_safe_weights(model, get_family("sd1"), None, allow_pickle=True)
