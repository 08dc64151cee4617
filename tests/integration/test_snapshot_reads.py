"""Reads that must see one picture of several tables (the queue explainer's) share one snapshot."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Connection, func, select

from runyard.server.store import EventStore
from runyard.server.store.model import NewEvent
from runyard.server.store.schema import event_log

pytestmark = pytest.mark.integration


def _count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(event_log)).scalar_one())


def _append(store: EventStore, stream: str) -> None:
    store.append(stream, [NewEvent("runyard.v1.Test", b"x", uuid.uuid4())])


def test_a_snapshot_read_does_not_see_a_commit_made_between_its_statements(store: EventStore) -> None:
    _append(store, "snap:a")
    with store.snapshot_engine.connect() as conn:
        before = _count(conn)
        _append(store, "snap:b")  # commits on another connection between the two statements
        assert _count(conn) == before, "a second statement saw a later commit: the explainer could see a run twice"
    with store.snapshot_engine.connect() as conn:
        assert _count(conn) == before + 1
