"""Sweep fixtures: a real PostgreSQL server for the multi-machine storage tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def postgres_url():
    """``postgresql+psycopg://postgres@127.0.0.1:PORT/sdexp_test`` on a throwaway server, one per
    test process (each pytest-xdist worker starts its own); tests keep apart by study name."""
    from postgres_server import postgres_server

    with postgres_server() as url:
        yield url
