"""The sdexp CLI as a user runs it: export-model writes a loadable folder; bad input → one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from sdexp.cli import COMMANDS, main

pytestmark = pytest.mark.usefixtures("isolated_cli_state")


def sdexp(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env.pop("SDEXP_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "sdexp.cli", *args], capture_output=True, text=True, env=full_env, timeout=300
    )


def assert_one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and needle in lines[0], lines[0]


def test_export_model_writes_a_loadable_folder(tmp_path):
    from diffusers import StableDiffusionPipeline

    from sdexp.models.loading import load_base

    out = tmp_path / "exported"
    result = sdexp("export-model", "tiny", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert result.stderr.strip() == ""  # no progress bars or info logs
    assert not [p for p in tmp_path.iterdir() if p.name != "exported"]  # no staging folder left behind
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True, safety_checker=None)
    base = load_base("tiny")
    for name, module in (("unet", base.unet), ("vae", base.vae), ("text_encoder", base.text_encoders[0])):
        ours, theirs = getattr(pipe, name).state_dict(), module.state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert load_base(out).name == "exported"  # and sdexp itself takes it as a model path


def test_export_model_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    assert_one_line_error(sdexp("export-model", "tiny", str(tmp_path)), "not empty")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_bad_inputs_are_one_line_exit_2(tmp_path):
    assert_one_line_error(
        sdexp(
            "generate",
            "--model",
            "tiny",
            "--lora",
            str(tmp_path / "no.safetensors"),
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "o"),
        ),
        "no.safetensors does not exist",
    )
    assert_one_line_error(sdexp("inspect", str(tmp_path / "nothing")), "does not exist")
    assert_one_line_error(
        sdexp("generate", "--model", "tiny", "--bogus"), "arguments are required: --prompt, --out"
    )


def test_bad_inputs_in_process(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export-model", "/definitely/not/a/model", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdexp export-model: error: ")
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "generate",
                "--model",
                "tiny",
                "--prompt",
                "x",
                "--out",
                str(tmp_path),
                "--lora",
                "a",
                "--lora",
                "b",
                "--lora-scale",
                "1",
                "--lora-scale",
                "2",
                "--lora-scale",
                "3",
            ]
        )
    assert exit_info.value.code == 2
    assert "one per --lora" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--model", "tiny", "--prompt", "x", "--out", str(tmp_path), "--scheduler", "plms"])
    assert exit_info.value.code == 2
    assert main([]) == 2


def test_subcommands_are_registered():
    assert {"generate", "inspect", "export-model"} <= set(COMMANDS)
