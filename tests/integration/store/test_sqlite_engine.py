"""SQLite specifics: a file in WAL mode, writers queued, one writer per thread."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from runyard.server.store import EventStore, create_store_engine
from tests.support.databases import sqlite_url

from .conftest import new_event, stream

pytestmark = pytest.mark.integration


def test_an_in_memory_database_is_refused() -> None:
    with pytest.raises(ValueError, match="file"):
        create_store_engine("sqlite://")
    with pytest.raises(ValueError, match="file"):
        create_store_engine("sqlite:///:memory:")


def test_the_log_is_a_wal_file_that_creates_its_folder(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "state" / "nested")
    store = EventStore.open(url)
    try:
        store.append(stream("run"), [new_event()])
        with store.read_engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    finally:
        store.close()
    assert (tmp_path / "state" / "nested" / "runyard.db").exists()


def test_a_second_write_transaction_in_the_same_thread_fails_at_once(tmp_path: Path) -> None:
    """Waiting would deadlock on ourselves: say so instead of hanging for the busy timeout."""
    store = EventStore.open(sqlite_url(tmp_path))
    try:
        with store.transaction() as tx:
            tx.append(stream("run"), [new_event()])
            started = time.monotonic()
            with pytest.raises(OperationalError, match="already has a write transaction"):
                store.append(stream("run"), [new_event()])
            assert time.monotonic() - started < 1.0
        store.append(stream("run"), [new_event()])  # the lock was handed back
        assert store.head_position() == 2
    finally:
        store.close()


def test_a_second_process_is_kept_out_by_sqlite_itself(tmp_path: Path) -> None:
    """Another process does not share our mutex; SQLite's own write lock still holds it off."""
    store = EventStore.open(sqlite_url(tmp_path))
    try:
        with store.transaction() as tx:
            tx.append(stream("run"), [new_event()])
            other = sqlite3.connect(tmp_path / "runyard.db", timeout=0.1, isolation_level=None)
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()
    finally:
        store.close()
