"""Single-file checkpoints: every tiny family written in the original layout loads back through
diffusers bit-exactly (fp32, fp16, EMA-only) and generates the same image; files are classified
from their tensor names; pickles are opened only when allowed."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sdexp.errors import UserError
from sdexp.models import ldm_layout as L
from sdexp.models.single_file import (
    KIND_MEANINGS,
    classify_file,
    classify_keys,
    describe,
    load_components,
    read_keys,
    read_state_dict,
    unet_family,
    write_single_file,
)
from sdexp.models.tiny import ensure_tiny

# tiny model → {text encoder: (single-file prefix, OpenCLIP layout)}
TEXT_LAYOUT = {
    "tiny": {"text_encoder": ("cond_stage_model.transformer.", False)},
    "tiny_sd2": {"text_encoder": ("cond_stage_model.model.", True)},
    "tiny_sdxl": {
        "text_encoder": ("conditioner.embedders.0.transformer.", False),
        "text_encoder_2": ("conditioner.embedders.1.model.", True),
    },
}
KIND = {"tiny": "sd1", "tiny_sd2": "sd2", "tiny_sdxl": "sdxl"}


def _encoder_ldm(encoder, open_clip: bool) -> dict:
    if not open_clip:
        return L.clip_to_ldm(encoder.state_dict())
    projection = getattr(encoder, "text_projection", None)
    return L.open_clip_to_ldm(
        encoder.state_dict(),
        encoder.config.to_dict(),
        projection=None if projection is None else projection.weight,
    )


def original_layout(pipe, text_layout: dict) -> dict[str, torch.Tensor]:
    """A diffusers pipeline as A1111/ComfyUI hold it in one file."""
    out = {
        "model.diffusion_model." + k: v
        for k, v in L.unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config)).items()
    }
    out.update(
        {
            "first_stage_model." + k: v
            for k, v in L.vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)).items()
        }
    )
    for attribute, (prefix, open_clip) in text_layout.items():
        out.update({prefix + k: v for k, v in _encoder_ldm(getattr(pipe, attribute), open_clip).items()})
    return out


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """{tiny name: (folder, pipeline, single-file path)}."""
    from diffusers import DiffusionPipeline

    from sdexp.quiet import quiet_libraries

    quiet_libraries()
    root = tmp_path_factory.mktemp("single")
    out = {}
    for name, layout in TEXT_LAYOUT.items():
        folder = ensure_tiny(name)
        pipe = DiffusionPipeline.from_pretrained(folder)
        path = write_single_file(
            root / f"{name}.safetensors", original_layout(pipe, layout), {"sdexp.test": name}
        )
        out[name] = (folder, pipe, path)
    return out


def _components(name: str) -> tuple[str, ...]:
    return ("unet", "vae", *TEXT_LAYOUT[name])


def _assert_same_weights(expected: dict, loaded: dict, dtype=None) -> None:
    for component, module in loaded.items():
        want, got = expected[component].state_dict(), module.state_dict()
        assert set(want) == set(got), component
        for key, value in want.items():
            value = value.to(dtype) if dtype is not None and value.is_floating_point() else value
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), f"{component}.{key}"


def _image(pipe) -> np.ndarray:
    """A 2-step image. Weights are first copied to fresh memory: CPU matmul kernels round
    differently for differently aligned operands, and a folder's weights are mmapped at whatever
    offset the file gives them (SDXL's text projection, 8- vs 64-byte aligned, changed the last bit)."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            for param in module.parameters():
                param.data = param.data.clone()
    out = pipe(
        "a photo of sks dog",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return out.images[0]


@pytest.mark.parametrize("name", list(TEXT_LAYOUT))
def test_tiny_single_file_loads_back_bit_exact_and_generates_the_same_image(tiny_files, name):
    from diffusers import DiffusionPipeline

    folder, pipe, path = tiny_files[name]
    assert classify_file(path) == KIND[name]
    loaded = load_components(path, folder, _components(name), torch.float32)
    _assert_same_weights({c: getattr(pipe, c) for c in loaded}, loaded)
    again = DiffusionPipeline.from_pretrained(folder, **loaded)
    assert np.array_equal(_image(pipe), _image(again))


def test_fp16_file_loads_as_the_fp16_weights(tiny_files, tmp_path):
    folder, pipe, _ = tiny_files["tiny_sdxl"]
    path = write_single_file(
        tmp_path / "xl16.safetensors", original_layout(pipe, TEXT_LAYOUT["tiny_sdxl"]), dtype=torch.float16
    )
    assert {info["dtype"] for info in read_keys(path).values()} == {"F16"}
    assert classify_file(path) == "sdxl" and unet_family(read_keys(path)) == "sdxl"
    loaded = load_components(path, folder, _components("tiny_sdxl"), torch.float16)
    _assert_same_weights({c: getattr(pipe, c) for c in loaded}, loaded, dtype=torch.float16)


def _ema_copy(tensors: dict, shift: float) -> dict:
    """LitEma's naming: ``model_ema.`` + the UNet key without ``model.`` and without dots."""
    return {
        "model_ema." + k.removeprefix("model.").replace(".", ""): v + shift
        for k, v in tensors.items()
        if k.startswith("model.diffusion_model.")
    }


def test_ema_weights(tiny_files, tmp_path):
    folder, pipe, path = tiny_files["tiny"]
    tensors = load_file(path)
    ema = _ema_copy(tensors, 1.0)
    others = {k: v for k, v in tensors.items() if not k.startswith("model.diffusion_model.")}
    shifted = {k: v + 1.0 for k, v in pipe.unet.state_dict().items()}

    # EMA only: diffusers alone finds no UNet in such a file, with or without extract_ema
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    with pytest.raises(SingleFileComponentError):
        UNet2DConditionModel.from_single_file(ema, config=str(folder), subfolder="unet", extract_ema=True)
    ema_only = write_single_file(
        tmp_path / "ema_only.safetensors", {**others, **ema, "model_ema.num_updates": torch.tensor(7)}
    )
    assert classify_file(ema_only) == "sd1"
    unet = load_components(ema_only, folder, ("unet",))["unet"]
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in shifted.items())

    # both copies: the training weights unless EMA is asked for
    both = write_single_file(tmp_path / "both.safetensors", {**tensors, **ema})
    plain = load_components(both, folder, ("unet",))["unet"]
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in pipe.unet.state_dict().items())
    chosen = load_components(both, folder, ("unet",), prefer_ema=True)["unet"]
    assert all(torch.equal(chosen.state_dict()[k], v) for k, v in shifted.items())
    with pytest.raises(UserError, match="no EMA weights"):
        load_components(path, folder, ("unet",), prefer_ema=True)


def test_missing_or_incomplete_components_are_refused(tiny_files, tmp_path):
    folder, _, path = tiny_files["tiny"]
    tensors = load_file(path)
    no_vae = write_single_file(
        tmp_path / "no_vae.safetensors", {k: v for k, v in tensors.items() if "first_stage" not in k}
    )
    with pytest.raises(UserError, match="no vae weights"):
        load_components(no_vae, folder, ("vae",))
    key = "model.diffusion_model.output_blocks.0.0.in_layers.2.weight"
    broken = write_single_file(
        tmp_path / "broken.safetensors", {k: v for k, v in tensors.items() if k != key}
    )
    with pytest.raises(UserError, match="incomplete"):
        load_components(broken, folder, ("unet",))
    with pytest.raises(UserError, match="could not load its unet"):  # an SD 1.x file with SD 2.x configs
        load_components(path, ensure_tiny("tiny_sd2"), ("unet",))


def test_vae_file_classifies_and_loads(tiny_files, tmp_path):
    folder, pipe, _ = tiny_files["tiny_sdxl"]
    path = write_single_file(
        tmp_path / "vae.safetensors", L.vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config))
    )
    assert classify_file(path) == "vae"
    vae = load_components(path, folder, ("vae",))["vae"]
    _assert_same_weights({"vae": pipe.vae}, {"vae": vae})


@pytest.fixture(scope="module")
def real_key_sets():
    """Full-size SD 1.5, SD 2.1 and SDXL in the original layout, as meta tensors (names, shapes)."""
    from sdexp.models.meta import build_meta

    layouts = {
        "sd15": {"text_encoder": ("cond_stage_model.transformer.", False)},
        "sd21": {"text_encoder": ("cond_stage_model.model.", True)},
        "sdxl": TEXT_LAYOUT["tiny_sdxl"],
    }
    out = {}
    for name, layout in layouts.items():
        parts = build_meta(name)

        class Pipe:  # what original_layout reads
            pass

        for component, module in parts.items():
            setattr(Pipe, component, module)
        out[name] = original_layout(Pipe, layout)
    return out


def test_classify_full_size_key_sets(real_key_sets):
    expected = {"sd15": "sd1", "sd21": "sd2", "sdxl": "sdxl"}
    for name, tensors in real_key_sets.items():
        assert classify_keys(tensors) == expected[name]
        assert classify_keys(list(tensors)) == expected[name]  # names alone suffice
        assert unet_family(tensors) == expected[name]
        unet = {k: v for k, v in tensors.items() if k.startswith("model.diffusion_model.")}
        assert classify_keys(unet) == "unet_only" and unet_family(unet) == expected[name]
        ema = _ema_copy(unet, 0.0)
        assert unet_family(ema) == expected[name]
        assert classify_keys({**{k: v for k, v in tensors.items() if k not in unet}, **ema}) == expected[name]
    sd15 = real_key_sets["sd15"]
    assert (
        classify_keys({k: v for k, v in sd15.items() if k.startswith("cond_stage_model.")})
        == "text_encoder_only"
    )
    assert (
        classify_keys(
            {
                k.removeprefix("first_stage_model."): v
                for k, v in sd15.items()
                if k.startswith("first_stage_model.")
            }
        )
        == "vae"
    )
    assert classify_keys({k: v for k, v in sd15.items() if k.startswith("first_stage_model.")}) == "vae"
    # the SDXL refiner: OpenCLIP-bigG alone as embedders.0, a 2560-wide label embedding
    xl = real_key_sets["sdxl"]
    refiner = {k: v for k, v in xl.items() if not k.startswith("conditioner.")}
    refiner.update(
        {
            k.replace("embedders.1.", "embedders.0."): v
            for k, v in xl.items()
            if k.startswith("conditioner.embedders.1.")
        }
    )
    refiner["model.diffusion_model.label_emb.0.0.weight"] = torch.empty(1536, 2560, device="meta")
    assert classify_keys(refiner) == "sdxl_refiner" and unet_family(refiner) == "sdxl_refiner"


def test_classify_other_files():
    kohya = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha",
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
    }
    peft = {
        "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight",
        "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight",
    }
    assert classify_keys(kohya) == classify_keys(peft) == "lora"
    assert classify_keys([]) == "unknown"
    assert classify_keys(["foo.weight", "bar.bias"]) == "unknown"
    assert classify_keys(["input_blocks.0.0.weight", "out.2.weight"]) == "unet_only"  # ComfyUI's bare UNet
    assert classify_keys(["text_model.embeddings.token_embedding.weight"]) == "text_encoder_only"
    assert set(KIND_MEANINGS) == {
        "sd1", "sd2", "sdxl", "sdxl_refiner", "lora", "vae", "unet_only", "text_encoder_only", "unknown"
    }  # fmt: skip
    assert "--lora" in describe("lora") and describe("nonsense") == KIND_MEANINGS["unknown"]


def test_unreadable_files_give_one_clear_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10" + random.Random(0).randbytes(4095))
    with pytest.raises(UserError, match="not a readable safetensors file"):
        read_keys(junk)
    (tmp_path / "list.safetensors").write_bytes(len(b"[1]").to_bytes(8, "little") + b"[1]")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        read_keys(tmp_path / "list.safetensors")
    with pytest.raises(UserError, match="cannot be read"):
        read_keys(tmp_path / "missing.safetensors")


def test_write_is_deterministic_atomic_and_casts_floats_only(tmp_path):
    tensors = {
        "b": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "a": torch.tensor([1, 2], dtype=torch.int64),
        "s": torch.tensor(0.5),
    }
    one = write_single_file(tmp_path / "one.safetensors", tensors, {"z": "1", "a": "2"})
    two = write_single_file(
        tmp_path / "two.safetensors", dict(reversed(tensors.items())), {"a": "2", "z": "1"}
    )
    assert one.read_bytes() == two.read_bytes()
    with safe_open(one, "pt") as f:
        assert f.metadata() == {"a": "2", "z": "1"}
    assert all(torch.equal(load_file(one)[k], v) for k, v in tensors.items())
    half = load_file(
        write_single_file(tmp_path / "one.safetensors", tensors, dtype=torch.bfloat16)
    )  # overwrites
    assert half["b"].dtype == torch.bfloat16 and half["a"].dtype == torch.int64
    with pytest.raises(ValueError):
        write_single_file(tmp_path / "bad.safetensors", {"c": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(ValueError):
        write_single_file(tmp_path / "bad.safetensors", tensors, {"n": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.safetensors", "two.safetensors"]


class _Payload:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickle_checkpoints_open_only_when_allowed(tiny_files, tmp_path):
    folder, pipe, path = tiny_files["tiny"]
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(path), "global_step": 3}, ckpt)
    with pytest.raises(UserError, match="pickle"):
        read_state_dict(ckpt)
    with pytest.raises(UserError, match="pickle"):
        load_components(ckpt, folder, ("unet",))
    with pytest.raises(UserError, match="pickle"):
        read_keys(ckpt)
    state = read_state_dict(ckpt, allow_pickle=True)
    assert classify_keys(state) == "sd1"
    unet = load_components(ckpt, folder, ("unet",), allow_pickle=True)["unet"]
    _assert_same_weights({"unet": pipe.unet}, {"unet": unet})
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Payload()}, hostile)
    with pytest.raises(UserError, match="not loadable as plain tensors"):
        read_state_dict(hostile, allow_pickle=True)
    safe = tmp_path / "tensors.safetensors"
    save_file({"x": torch.zeros(1)}, safe)
    assert read_state_dict(safe).keys() == {"x"}
