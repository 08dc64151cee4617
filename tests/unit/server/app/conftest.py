"""The handlers' event log: for now a temporary SQLite EventStore (the in-memory store takes its place later)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runyard.server.store import EventStore


@pytest.fixture
def event_store(tmp_path: Path) -> Iterator[EventStore]:
    store = EventStore.open(f"sqlite:///{tmp_path}/log.db")
    try:
        yield store
    finally:
        store.close()
