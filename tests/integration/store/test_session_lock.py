"""The lock behind the scheduler's leader lease: one holder among replicas, handed over when its session dies."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from runyard.server.store.dialects import SessionLock
from tests.support.databases import sqlite_url

pytestmark = pytest.mark.integration


def test_one_replica_holds_the_lock_until_it_releases_it(pg_session_url: str) -> None:
    key = uuid.uuid4().int % 2**62  # no other test competes for it
    first_engine, second_engine = create_engine(pg_session_url), create_engine(pg_session_url)
    taken: list[str] = []
    first = SessionLock(first_engine, key, on_acquired=lambda: taken.append("first"))
    second = SessionLock(second_engine, key, on_acquired=lambda: taken.append("second"))
    try:
        assert first.try_acquire() and first.try_acquire()
        assert not second.try_acquire()
        first.release()
        assert second.try_acquire()
        assert not first.try_acquire()
        assert taken == ["first", "second"]
    finally:
        first.release()
        second.release()
        first_engine.dispose()
        second_engine.dispose()


def test_a_dead_holder_session_hands_the_lock_over(pg_session_url: str) -> None:
    """kill -9 of the leader's process ends its session: PostgreSQL releases the lock, another replica takes it."""
    key = uuid.uuid4().int % 2**62
    first_engine, second_engine = create_engine(pg_session_url), create_engine(pg_session_url)
    lost: list[bool] = []
    first = SessionLock(first_engine, key, on_lost=lambda: lost.append(True))
    second = SessionLock(second_engine, key)
    try:
        assert first.try_acquire()
        assert not second.try_acquire()
        with second_engine.connect() as conn:
            ended = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND objid = :low AND classid = :high"
                ),
                {"low": key & 0xFFFFFFFF, "high": key >> 32},
            ).scalar_one()
        assert ended == 1
        assert second.try_acquire()
        assert not first.try_acquire()  # finds its session gone, steps down, and cannot take it back
        assert lost == [True]
    finally:
        first.release()
        second.release()
        first_engine.dispose()
        second_engine.dispose()


def test_the_only_process_on_sqlite_always_holds_it(tmp_path: Path) -> None:
    engine = create_engine(sqlite_url(tmp_path))
    try:
        lock = SessionLock(engine, 1)
        assert lock.try_acquire() and SessionLock(engine, 1).try_acquire()
        lock.release()
    finally:
        engine.dispose()
