"""`sdexp world shapes` / `sdexp world concept` as a user runs them: files written, bad input → one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from sdexp.cli import COMMANDS, main
from sdexp.world.shapes import load_concept, load_world


@pytest.fixture(autouse=True)
def restore_process_state():
    """main() sets quiet-library environment variables and warning filters for the whole process."""
    env = dict(os.environ)
    with warnings.catch_warnings():
        yield
    os.environ.clear()
    os.environ.update(env)


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def test_world_shapes_writes_n_images(tmp_path, capsys):
    out = tmp_path / "world"
    assert main(["world", "shapes", str(out), "--n", "7", "--seed", "3", "--split", "heldout"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"wrote 7 images to {out} in ") and line.endswith(" s")
    assert len(list(out.glob("*.png"))) == 7 and len(list(out.glob("*.txt"))) == 7
    manifest = load_world(out)
    assert (manifest["n"], manifest["seed"], manifest["split"]) == (7, 3, "heldout")


def test_world_concept_writes_n_images(tmp_path, capsys):
    out = tmp_path / "concept"
    args = ["world", "concept", str(out), "--n", "4", "--seed", "1", "--token", "zwx", "--size", "32"]
    assert main([*args, "--concept", "checker_square"]) == 0
    assert "wrote 4 checker_square images" in capsys.readouterr().out
    assert len(list(out.glob("*.png"))) == 4
    manifest = load_concept(out)
    assert (manifest["instance_prompt"], manifest["size"]) == ("a zwx square", 32)


def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    cases = [
        (["world", "shapes", str(tmp_path / "taken"), "--n", "2", "--seed", "0"], "not empty"),
        (["world", "shapes", str(tmp_path / "a"), "--n", "0", "--seed", "0"], "at least one image"),
        (
            ["world", "shapes", str(tmp_path / "a"), "--n", "2", "--seed", "0", "--split", "test"],
            "invalid choice",
        ),
        (["world", "shapes", str(tmp_path / "a"), "--seed", "0"], "required: --n"),
        (
            ["world", "concept", str(tmp_path / "a"), "--n", "2", "--seed", "0", "--concept", "dots"],
            "unknown concept",
        ),
    ]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        line = error_line(capsys)
        assert line.startswith(f"sdexp world {argv[1]}: error: ") and needle in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_the_group_is_nested_and_registered(capsys):
    assert {"world shapes", "world concept"} <= set(COMMANDS)
    assert main(["world"]) == 2  # no subcommand: the group's help, on stderr
    assert "shapes" in capsys.readouterr().err


def test_python_dash_m_sees_the_world_commands(tmp_path):
    """`python -m sdexp.cli` runs as __main__; the world module must register where main() looks."""
    out = tmp_path / "w"
    result = subprocess.run(
        [sys.executable, "-m", "sdexp.cli", "world", "shapes", str(out), "--n", "2", "--seed", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and sorted(p.name for p in out.iterdir())[-1] == "world.json"
