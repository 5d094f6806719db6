"""The lock under which a sweep worker creates the study and claims a trial, so that the trial
count is exact however many workers share the study.

Workers on one machine share the sweep folder, and an fcntl lock there serialises them (SQLite,
journal). Workers on several machines share only a PostgreSQL study: there the lock is a session
advisory lock in that database, keyed by the study name, held on its own connection. A worker that
dies while holding it loses its connection, and the server releases the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from pathlib import Path

LOCK_FILE = ".sweep.lock"
KEY_PREFIX = "sdexp sweep study:"  # keeps our keys apart from advisory locks other programs take


def is_postgres(storage_url: str) -> bool:
    return storage_url.startswith(("postgresql", "postgres:"))


def advisory_key(study_name: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock``, the same on every machine for one study."""
    digest = hashlib.sha256((KEY_PREFIX + study_name).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def folder_lock(sweep_dir: Path):
    """Serialises study creation and trial claiming between workers that share the sweep folder."""
    with open(Path(sweep_dir) / LOCK_FILE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def advisory_lock(storage_url: str, study_name: str):
    """Holds PostgreSQL's session advisory lock for ``study_name`` in the study's database, on a
    connection of its own (closed after, so the lock cannot outlive the block on a pooled one)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    from sdexp.sweep.layout import sqlalchemy_url

    key = advisory_key(study_name)
    engine = sqlalchemy.create_engine(sqlalchemy_url(storage_url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            conn.commit()  # not inside a transaction while held: the lock is the session's
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
    finally:
        engine.dispose()


def study_lock(storage_url: str, sweep_dir: Path, study_name: str):
    """The lock that serialises creating ``study_name`` and claiming its trials: PostgreSQL's
    advisory lock for a postgresql URL (workers on several machines), else the sweep folder's."""
    if is_postgres(storage_url):
        return advisory_lock(storage_url, study_name)
    return folder_lock(sweep_dir)
