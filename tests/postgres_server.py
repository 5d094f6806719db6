"""A throwaway PostgreSQL server for the tests: the real multi-machine study storage, started in a
temporary folder on a free port and removed afterwards.

``postgres_server()`` installs PostgreSQL through ``tools/install_test_services.sh`` when it is
missing and we are root, and fails with a clear message otherwise: a test of the real storage must
not turn into a skip. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` user in a folder handed to it. Each pytest-xdist worker may start its own server; each
takes a port the kernel reports free and retries on a clash.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALLER = REPO / "tools" / "install_test_services.sh"
SERVICE_USER = "postgres"
START_ATTEMPTS = 3


class PostgresUnavailable(RuntimeError):
    """PostgreSQL is not installed and cannot be installed here, or the server would not start."""


def postgres_bin_dir() -> Path:
    """The folder holding initdb and pg_ctl (the newest installed major version), installing
    PostgreSQL first when it is missing and we are root."""
    found = _installed()
    if found is None and os.geteuid() == 0:
        result = subprocess.run(["bash", str(INSTALLER)], capture_output=True, text=True)
        if result.returncode != 0:
            raise PostgresUnavailable(f"{INSTALLER} failed: {result.stderr.strip()[-2000:]}")
        found = _installed()
    if found is None:
        raise PostgresUnavailable(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run "
            f"`sudo bash {INSTALLER.relative_to(REPO)}` or `sudo apt-get install -y postgresql`"
        )
    return found


def _installed() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", SERVICE_USER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(
        _as_server_user(command), capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        raise PostgresUnavailable(
            f"{what} failed ({result.returncode}): {(result.stdout + result.stderr).strip()[-2000:]}"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_database(server_url: str, name: str) -> str:
    """A new empty database on the server of ``server_url``; returns its SQLAlchemy URL."""
    import psycopg

    plain = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@contextlib.contextmanager
def postgres_server(database: str = "sdexp_test") -> Iterator[str]:
    """Start a server with one database ``database``; yield its URL
    (``postgresql+psycopg://postgres@127.0.0.1:PORT/DATABASE``); stop it and delete its folder."""
    bin_dir = postgres_bin_dir()
    folder = Path(tempfile.mkdtemp(prefix="sdexp-pg-"))  # in /tmp: every parent is open to the server user
    data = folder / "data"
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, SERVICE_USER, SERVICE_USER)
        _run(
            [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", SERVICE_USER, "--no-sync"],
            "initdb",
        )
        port = _start(bin_dir, data, folder)
        try:
            yield create_database(f"postgresql+psycopg://{SERVICE_USER}@127.0.0.1:{port}/postgres", database)
        finally:
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], "pg_ctl stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _start(bin_dir: Path, data: Path, folder: Path) -> int:
    """Start the server on a free port (another xdist worker may take the same one first: retry)."""
    error = None
    for _ in range(START_ATTEMPTS):
        port = free_port()
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = folder / f"server-{uuid.uuid4().hex[:6]}.log"  # the server's output must not hold our pipes
        try:
            _run(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start"],
                "pg_ctl start",
            )
            return port
        except PostgresUnavailable as err:
            error = f"{err}; server log: {log.read_text()[-2000:] if log.exists() else '(none)'}"
    raise PostgresUnavailable(error)
