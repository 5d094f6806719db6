"""bench/step.py: the step benchmark runs end to end on the tiny models (SD 1.x and SDXL), both sides
train the same LoRA, and its hand-written SDXL reference conditions the UNet exactly as diffusers'
StableDiffusionXLPipeline does (so the comparison stays honest without borrowing sdexp's encoding)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
STEP = REPO / "bench" / "step.py"


@pytest.fixture(scope="module")
def step():
    spec = importlib.util.spec_from_file_location("bench_step", STEP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_bench_runs_on_tiny_and_tiny_sdxl_and_both_sides_train_the_same_lora(tmp_path):
    for model in ("tiny", "tiny_sdxl"):
        out = tmp_path / f"{model}.json"
        proc = subprocess.run(
            [sys.executable, str(STEP), "--model", model, "--batch", "2", "--steps", "2", "--warmup", "1"]
            + ["--device", "cpu", "--json", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "time x" in proc.stdout and f"{model} batch 2" in proc.stdout
        (row,) = json.loads(out.read_text())["rows"]
        ref, ours = row["ref"], row["sdexp"]
        assert ref["impl"] == "ref" and ours["impl"] == "sdexp"
        assert ref["lora_modules"] == ours["lora_modules"] > 0
        assert ref["trainable_params"] == ours["trainable_params"] > 0
        assert row["same_training"] and row["time_ratio"] > 0
        assert ref["conditioning"] == ours["conditioning"] == ("sdxl" if model == "tiny_sdxl" else "text")
        assert len(ref["step_ms_all"]) == len(ours["step_ms_all"]) == 3  # warm-up + timed steps
    merged = tmp_path / "all.json"
    proc = subprocess.run(
        [sys.executable, str(STEP), "--merge", str(tmp_path / "tiny.json"), str(tmp_path / "tiny_sdxl.json")]
        + ["--json", str(merged)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r["model"] for r in json.loads(merged.read_text())["rows"]] == ["tiny", "tiny_sdxl"]


def test_the_sdxl_reference_conditions_as_the_pipeline_does(step):
    """Hidden states, pooled embedding and time ids of the reference equal StableDiffusionXLPipeline's
    ``encode_prompt`` and ``_get_add_time_ids`` for the same prompt and sizes; sdexp's SDXL family
    gives the UNet the same (so both sides of the bench do the same work)."""
    from diffusers import StableDiffusionXLPipeline

    from sdexp.models.loading import load_base

    folder = step.model_folder(step.MODELS["tiny_sdxl"])
    ref = step.load_reference(folder, torch.float32)
    assert ref.sdxl and ref.vae.dtype == torch.float32
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    prompts = [step.CAPTION, "a red star on a blue table"]
    ids = [step.tokenize_prompt(tok, prompts) for tok in ref.tokenizers]
    with torch.no_grad():
        hidden, pooled = step.encode_prompt(ref.text_encoders, ids)
        want_hidden, _, want_pooled, _ = pipe.encode_prompt(
            prompts, device="cpu", do_classifier_free_guidance=False
        )
    torch.testing.assert_close(hidden, want_hidden, rtol=0, atol=0)
    torch.testing.assert_close(pooled, want_pooled, rtol=0, atol=0)

    sizes, crops, target = [(768, 1024), (1024, 512)], [(32, 16), (0, 0)], (1024, 1024)
    time_ids = torch.cat(
        [step.compute_time_ids(s, c, target, "cpu", torch.float32) for s, c in zip(sizes, crops)]
    )
    projection_dim = pipe.text_encoder_2.config.projection_dim
    want_ids = torch.cat(
        [pipe._get_add_time_ids(s, c, target, torch.float32, projection_dim) for s, c in zip(sizes, crops)]
    )
    torch.testing.assert_close(time_ids, want_ids, rtol=0, atol=0)

    # The geometry the bench feeds both sides: a square image at the resolution, uncropped.
    original, crop, square = step.reference_geometry(2, 64)
    bench_ids = torch.cat(
        [step.compute_time_ids(s, c, square, "cpu", torch.float32) for s, c in zip(original, crop)]
    )
    torch.testing.assert_close(
        bench_ids,
        pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), torch.float32, projection_dim).expand(2, -1),
    )

    base = load_base("tiny_sdxl")
    with torch.no_grad():
        ours = base.family.condition(
            base.encode(prompts),
            {
                "original_size": torch.tensor(sizes),
                "crop_top_left": torch.tensor(crops),
                "target_size": torch.tensor([target] * 2),
            },
        )
    kwargs = ours.unet_kwargs(torch.float32)
    torch.testing.assert_close(kwargs["encoder_hidden_states"], hidden, rtol=0, atol=0)
    torch.testing.assert_close(kwargs["added_cond_kwargs"]["text_embeds"], pooled, rtol=0, atol=0)
    torch.testing.assert_close(kwargs["added_cond_kwargs"]["time_ids"], time_ids, rtol=0, atol=0)


def test_a_random_architecture_folder_is_built_from_configs_and_loads_on_both_sides(step, tmp_path):
    """build_random_model (what makes sd15-arch / sd21-arch / sdxl-arch from the shipped configs)
    on the tiny SDXL folder's configs: every model component seeded and stored in bf16, scheduler and
    tokenizers copied; the reference and sdexp's load_base both read it."""
    from sdexp.models.loading import load_base

    source = step.model_folder(step.MODELS["tiny_sdxl"])
    out = step.build_random_model(source, tmp_path / "arch", "cpu")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "scheduler",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "unet",
        "vae",
    ]
    ref = step.load_reference(out, torch.bfloat16)
    assert ref.sdxl and ref.unet.dtype == torch.bfloat16 and ref.vae.dtype == torch.float32
    assert step.native_resolution(ref) == 64
    base = load_base(out, dtype=torch.bfloat16)
    assert base.family.name == "sdxl"
    for a, b in zip(ref.unet.state_dict().values(), base.unet.state_dict().values()):
        assert torch.equal(a, b)
    again = step.build_random_model(source, tmp_path / "again", "cpu")  # seeded: the same weights
    assert (again / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        out / "unet" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()
