"""What only the in-memory event log has to say; everything it shares with the SQL backends is in
tests/integration/store/test_event_log_contract.py, which runs on it too."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from runyard.server.store import NO_STREAM, InMemoryEventStore, NestedTransactionError, NewEvent


def _event() -> NewEvent:
    return NewEvent("runyard.v1.Test", b"x", uuid.uuid4())


def test_a_second_write_transaction_in_the_same_thread_fails_at_once(memory_event_store: InMemoryEventStore) -> None:
    """Waiting on our own write lock would hang the test forever: say so instead (SQLite does the same)."""
    store = memory_event_store
    with store.transaction() as tx:
        tx.append("run-1", [_event()], NO_STREAM)
        with pytest.raises(NestedTransactionError, match="already has a write transaction"):
            store.append("run-2", [_event()])
    assert store.append("run-2", [_event()]).last_position == 2  # the lock was handed back
    assert [e.stream_id for e in store.read_all()] == ["run-1", "run-2"]


def test_a_transaction_that_appended_nothing_takes_no_lock_and_commits_nothing(
    memory_event_store: InMemoryEventStore,
) -> None:
    store = memory_event_store
    seen: list[int] = []
    store.on_commit(seen.append)
    with store.transaction():
        store.append("run-1", [_event()])  # no lock held by the empty unit of work
    assert store.head_position() == 1 and seen == [1]


def test_close_ends_subscriptions_and_waits_at_once(memory_event_store: InMemoryEventStore) -> None:
    store = memory_event_store
    stop = threading.Event()
    ended = threading.Event()

    def follow() -> None:
        for _ in store.subscribe(0, stop=stop, poll_interval=60):
            pass
        ended.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    started = time.monotonic()
    store.close()
    assert ended.wait(5)
    assert store.wait_for_append(0, timeout=60) is False
    assert time.monotonic() - started < 5
