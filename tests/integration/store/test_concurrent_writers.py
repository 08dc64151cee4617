"""Many writers at once, through every append path: the log stays gap-free, each event once, in order.

On PostgreSQL a single-stream `EventStore.append` is one autocommit statement
(its own transaction) while `transaction()` spans several; both take the
log's write lock. These tests mix them, with conflicts and rollbacks, and
check what every reader relies on: positions 1, 2, 3... with no hole and no
repeat, each stream's versions contiguous, a follower seeing all of it in
order, and a failed append leaving nothing behind (no row, no held lock).
"""

from __future__ import annotations

import contextlib
import threading

import pytest

from runyard.server.store import (
    ANY,
    NO_STREAM,
    ConcurrencyError,
    DuplicateEventError,
    EventStore,
    RecordedEvent,
)

from .conftest import Subscriber, new_event, sql_only, stream

pytestmark = pytest.mark.integration

ROUNDS = 30


class _Rollback(Exception):
    pass


def test_mixed_concurrent_writers_leave_no_gap_and_no_duplicate(store: EventStore) -> None:
    head = store.head_position()
    shared = stream("shared")
    store.append(shared, [new_event()], NO_STREAM)
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def single(name: str) -> None:
        s = stream(name)
        for i in range(ROUNDS):
            store.append(s, [new_event()], NO_STREAM if i == 0 else i)

    def batches(name: str) -> None:
        s = stream(name)
        for i in range(ROUNDS // 3):
            store.append(s, [new_event() for _ in range(7)], i * 7)

    def transactions(name: str) -> None:
        a, b = stream(name), stream(name)
        version = 0
        for i in range(ROUNDS):
            try:
                with store.transaction() as tx:
                    tx.append(a, [new_event()], version)
                    tx.append(b, [new_event(), new_event()], ANY)
                    if i % 3 == 2:
                        raise _Rollback  # positions handed out here must be handed out again
                version += 1
            except _Rollback:
                pass

    def conflicting() -> None:
        for _ in range(ROUNDS):
            current = store.stream_version(shared)
            with contextlib.suppress(ConcurrencyError):
                store.append(shared, [new_event()], current)
            with pytest.raises(ConcurrencyError):
                store.append(shared, [new_event()], 0)  # always stale: nothing stored, nothing held

    def run(target: object, *args: object) -> threading.Thread:
        def body() -> None:
            try:
                start.wait()
                target(*args)  # type: ignore[operator]
            except BaseException as exc:
                errors.append(exc)

        return threading.Thread(target=body)

    with Subscriber(store, head) as follower:
        threads = [
            run(single, "single"),
            run(single, "single"),
            run(batches, "batch"),
            run(transactions, "tx"),
            run(transactions, "tx"),
            run(conflicting),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
        logged = store.read_all(head, 100_000)
        followed = follower.wait_for(len(logged), 30)[: len(logged)]

    expected = 1 + 2 * ROUNDS + (ROUNDS // 3) * 7 + 2 * (ROUNDS - ROUNDS // 3) * 3
    assert len(logged) >= expected  # and the shared stream's successful appends
    assert [e.position for e in logged] == list(range(head + 1, head + 1 + len(logged)))
    assert len({e.event_id for e in logged}) == len(logged)
    assert [e.position for e in followed] == [e.position for e in logged]
    assert [e.event_id for e in followed] == [e.event_id for e in logged]
    by_stream: dict[str, list[RecordedEvent]] = {}
    for e in logged:
        by_stream.setdefault(e.stream_id, []).append(e)
    for events in by_stream.values():
        assert [e.version for e in events] == list(range(1, len(events) + 1))
    assert store.head_position() == logged[-1].position


def test_a_refused_single_append_stores_nothing_and_holds_no_lock(store: EventStore) -> None:
    s = stream("run")
    stored = new_event()
    store.append(s, [stored], NO_STREAM)
    head = store.head_position()

    with pytest.raises(ConcurrencyError):
        store.append(s, [new_event()], NO_STREAM)
    with pytest.raises(DuplicateEventError):
        store.append(stream("other"), [stored], ANY)
    assert store.append(s, [stored], NO_STREAM).appended is False  # a retry answers, appends nothing

    # Another writer gets the very next position at once: nothing was left locked or half-written.
    done = threading.Event()
    results = []

    def other() -> None:
        results.append(store.append(stream("next"), [new_event()], NO_STREAM))
        done.set()

    t = threading.Thread(target=other)
    t.start()
    assert done.wait(30)
    t.join()
    assert results[0].last_position == head + 1
    assert [e.position for e in store.read_all(head)] == [head + 1]


def test_an_acknowledged_single_append_is_committed(store: EventStore) -> None:
    """The one-statement append commits before it answers: a second store (other connections) sees it."""
    store = sql_only(store, "one process's log: there is no other connection to look through")
    s = stream("run")
    event = new_event()
    result = store.append(s, [event], NO_STREAM)
    other = EventStore.open(store.engine.url, migrate=False)
    try:
        assert other.head_position() >= result.last_position
        assert [e.event_id for e in other.read_stream(s)] == [event.event_id]
    finally:
        other.close()
