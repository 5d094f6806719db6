"""Headless Chromium for the report pages: the system package, driven by Playwright's Python API.

Chromium is a test service like PostgreSQL: when it is missing and we are root it is installed
(tools/install_test_services.sh); otherwise the tests fail saying what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None and os.geteuid() == 0:
        subprocess.run([str(REPO / "tools" / "install_test_services.sh")], check=True)
        path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: run tools/install_test_services.sh as root "
                    "(or: sudo apt-get install -y chromium)")  # fmt: skip
    return path


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield browser
        browser.close()
