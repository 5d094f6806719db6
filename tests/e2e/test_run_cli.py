"""run.py as a person uses it: bad inputs fail fast and clearly; a saved config reruns the run."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def _one_line_exit_2(proc, fragment):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_inputs_fail_with_one_line_and_exit_2(cli, tmp_path, toy_images):
    run = tmp_path / "run"
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "ok.png").write_bytes((toy_images / "toy-00.png").read_bytes())
    (corrupt / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    common = ["data.prompt=x", f"hydra.run.dir={run}", "logger=none"]
    cases = [
        ([f"data.dir={toy_images}", "model=sd15", f"model.path={tmp_path / 'missing'}"], "does not exist"),
        ([f"data.dir={toy_images}", "model=sd15", f"model.path={not_a_model}"], "no model_index.json"),
        ([f"data.dir={empty}"], "no images found"),
        ([f"data.dir={corrupt}"], "1 unreadable image(s)"),
        (["data.dir=null"], "data.dir"),
    ]
    for args, fragment in cases:
        proc = cli(["run.py", *common, *args])
        if "unreadable" in fragment:
            assert proc.returncode == 2 and "broken.png" in proc.stderr and "Traceback" not in proc.stderr
            assert proc.stderr.splitlines()[0].startswith("sdexp: error: 1 unreadable image(s)")
        else:
            _one_line_exit_2(proc, fragment)
        assert not (run / "checkpoints").exists()
    debug = cli(["run.py", *common, f"data.dir={empty}"], env={"SDEXP_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_skip_bad_trains_on_the_readable_images(cli, tmp_path, toy_images):
    (toy_images / "broken.jpg").write_bytes(b"garbage")
    proc = cli(
        [
            "run.py",
            f"data.dir={toy_images}",
            "data.prompt=x",
            "data.skip_bad=true",
            "train.steps=2",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "checkpoints" / "final" / "lora.safetensors").exists()
    assert (toy_images / "broken.jpg").read_bytes() == b"garbage"


def test_saved_config_reruns_to_identical_weights(cli, tmp_path, toy_images):
    first, second = tmp_path / "first", tmp_path / "second"
    env = {"SOURCE_DATE_EPOCH": "1780000000"}
    proc = cli(
        [
            "run.py",
            f"data.dir={toy_images}",
            "data.prompt=a photo of sks toy",
            "train.steps=4",
            "method.rank=2",
            "train.lr=1e-3",
            "train.seed=5",
            "logger=none",
            f"hydra.run.dir={first}",
        ],
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "run folder:" in proc.stdout
    proc = cli(
        ["run.py", "--config-path", str(first), "--config-name", "config", f"hydra.run.dir={second}"], env=env
    )
    assert proc.returncode == 0, proc.stderr
    lora = "checkpoints/final/lora.safetensors"
    assert (first / lora).read_bytes() == (second / lora).read_bytes()
    assert (first / "config.yaml").read_text() == (second / "config.yaml").read_text()


def test_hydra_multirun_runs_a_plain_grid(cli, tmp_path, toy_images):
    sweep = tmp_path / "grid"
    proc = cli(
        [
            "run.py",
            "-m",
            f"data.dir={toy_images}",
            "data.prompt=x",
            "train.steps=2",
            "logger=none",
            "method.rank=2,4",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    for job, rank in (("0", "2"), ("1", "4")):
        assert (sweep / job / "checkpoints" / "final" / "lora.safetensors").exists()
        assert f"rank: {rank}" in (sweep / job / "config.yaml").read_text()
    bad = cli(
        ["run.py", "-m", f"data.dir={toy_images}", "method.rank=2,0", f"hydra.sweep.dir={tmp_path / 'b'}"]
    )
    _one_line_exit_2(bad, "method.rank")
