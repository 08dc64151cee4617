"""Fixtures of the integration tests: an event log of the test's own, once per backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runyard.server.store import EventStore


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    """A fresh PostgreSQL database, then a fresh SQLite file (tests/integration/store shares one session database)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else f"sqlite:///{tmp_path}/runyard.db"
    opened = EventStore.open(url)
    try:
        yield opened
    finally:
        opened.close()
