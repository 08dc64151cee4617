"""The handlers' event log: the in-memory store (fast), and SQLite to show the handlers hold on a real backend too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runyard.server.store import EventLog, EventStore, InMemoryEventStore


@pytest.fixture(params=["memory", "sqlite"])
def event_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    store: EventLog = InMemoryEventStore() if request.param == "memory" else EventStore.open(f"sqlite:///{tmp_path}/log.db")
    try:
        yield store
    finally:
        store.close()
