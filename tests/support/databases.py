"""Database URLs for tests: PostgreSQL on 127.0.0.1:5432 (trust auth) and SQLite files.

`pg_session_url` is one fresh database for the whole test session (dropped at
the end): creating a database costs about a second, so tests that share it
use their own stream ids and positions relative to the head they start from.
`fresh_postgres_database()` gives a test a database of its own when it needs
an empty one (migrations, replay from zero). `database_url` runs a test once
per backend. Import the fixtures into a conftest.py to use them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

PG_HOST = os.environ.get("RUNYARD_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("RUNYARD_TEST_PG_PORT", "5432"))
_USERS = [os.environ["RUNYARD_TEST_PG_USER"]] if "RUNYARD_TEST_PG_USER" in os.environ else ["postgres", "root"]


def _admin_connection() -> tuple[psycopg.Connection[tuple[object, ...]], str]:
    """A maintenance connection as the first user the server lets in."""
    errors = []
    for user in _USERS:
        try:
            conn = psycopg.connect(
                host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", autocommit=True, connect_timeout=5
            )
        except psycopg.OperationalError as exc:
            errors.append(f"{user}: {exc}")
            continue
        return conn, user
    raise RuntimeError(f"cannot reach PostgreSQL at {PG_HOST}:{PG_PORT} as {_USERS}: {errors}")


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty database with a random name; yield its SQLAlchemy URL; drop it."""
    name = f"runyard_test_{uuid.uuid4().hex[:12]}"
    conn, user = _admin_connection()
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        conn, _ = _admin_connection()
        with conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'runyard.db'}"


@pytest.fixture(scope="session")
def pg_session_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The test runs once on the session's PostgreSQL database and once on its own SQLite file."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_session_url"))
    return sqlite_url(tmp_path)
