"""`analysis` ships in the sdexp distribution: an installed sdexp writes reports (`sdexp report`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_analysis_and_sdexp_registers_its_report_command(tmp_path):
    """Build the real wheel (setuptools, as pip would) from a copy of what it is built from."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in ("sdexp", "analysis"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    script = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "dist")], cwd=src, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = tmp_path / "dist" / proc.stdout.strip().splitlines()[-1]
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "analysis/__init__.py",
        "analysis/report.py",
        "analysis/run_report.py",
        "analysis/plots.py",
        "analysis/cli.py",
    } <= names
    assert "sdexp/sweep/cli.py" in names and not any(n.startswith(("tests/", "bench/")) for n in names)

    from sdexp.cli import COMMAND_MODULES, COMMANDS, build_parser

    build_parser()
    assert "analysis.cli" in COMMAND_MODULES and "report" in COMMANDS
