"""The event log's contract, run against every backend: in memory, PostgreSQL and SQLite.

Everything else in Runyard relies on these: optimistic concurrency per
stream, idempotent appends, atomic batches and transactions, and a
subscription by position that never skips or repeats an event. One set of
cases, each run on each backend by the `store` fixture; the few that only
mean something with a database (a transaction's SQL connection, replicas
on one PostgreSQL) say why they skip the memory backend.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from runyard.server.store import (
    ANY,
    NO_STREAM,
    AppendResult,
    ConcurrencyError,
    DuplicateEventError,
    EventLog,
    EventStore,
    NewEvent,
    RecordedEvent,
)
from runyard.server.store.notify import LISTENER_APPLICATION_NAME
from runyard.server.store.schema import event_log

from .conftest import Subscriber, new_event, positions, sql_only, stream, wait_until

pytestmark = pytest.mark.integration


# -- appending and reading ------------------------------------------------------


def test_append_assigns_versions_from_one_and_the_next_positions(store: EventLog) -> None:
    s = stream("run")
    head = store.head_position()
    payload = bytes(range(256))
    events = [
        NewEvent("runyard.v1.RunCreated", payload, uuid.uuid4(), "exp-1"),
        NewEvent("runyard.v1.RunAssigned", b"", uuid.uuid4(), None),
    ]
    before = datetime.now(UTC)

    result = store.append(s, events, NO_STREAM)

    assert result == AppendResult(last_position=head + 2, last_version=2, appended=True)
    recorded = store.read_stream(s)
    assert [(e.position, e.version) for e in recorded] == [(head + 1, 1), (head + 2, 2)]
    first, second = recorded
    assert (first.stream_id, first.event_id, first.type, first.data, first.correlation_id) == (
        s,
        events[0].event_id,
        "runyard.v1.RunCreated",
        payload,
        "exp-1",
    )
    assert (second.data, second.correlation_id) == (b"", None)
    assert first.recorded_at.tzinfo is UTC
    assert before - timedelta(seconds=1) <= first.recorded_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert store.stream_version(s) == 2
    assert store.stream_version(stream("absent")) == 0
    assert store.head_position() == head + 2


def test_expected_version_is_checked_and_the_error_names_the_stream(store: EventLog) -> None:
    s = stream("run")
    store.append(s, [new_event(), new_event()], NO_STREAM)

    with pytest.raises(ConcurrencyError) as stale:
        store.append(s, [new_event()], 1)
    assert (stale.value.stream_id, stale.value.expected, stale.value.actual) == (s, 1, 2)
    assert s in str(stale.value) and "1" in str(stale.value) and "2" in str(stale.value)

    with pytest.raises(ConcurrencyError) as exists:
        store.append(s, [new_event()], NO_STREAM)
    assert (exists.value.expected, exists.value.actual) == (NO_STREAM, 2)

    with pytest.raises(ConcurrencyError) as absent:
        store.append(stream("absent"), [new_event()], 3)
    assert absent.value.actual == 0

    assert store.append(s, [new_event()], 2).last_version == 3
    assert store.append(s, [new_event()], ANY).last_version == 4
    assert store.stream_version(s) == 4


def _race_two_writers(store: EventLog, s: str, expected_version: int) -> list[object]:
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def write() -> None:
        barrier.wait()
        try:
            outcomes.append(store.append(s, [new_event()], expected_version))
        except ConcurrencyError as exc:
            outcomes.append(exc)

    writers = [threading.Thread(target=write) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(30)
    return outcomes


def test_two_writers_on_one_stream_exactly_one_wins(store: EventLog) -> None:
    """Both decided on version 1; whoever comes second must reload, never overwrite."""
    for _ in range(10):
        s = stream("run")
        store.append(s, [new_event()], NO_STREAM)
        outcomes = _race_two_writers(store, s, 1)
        wins = [o for o in outcomes if isinstance(o, AppendResult)]
        losses = [o for o in outcomes if isinstance(o, ConcurrencyError)]
        assert len(wins) == 1 and len(losses) == 1, outcomes
        assert losses[0].actual == 2
        assert [e.version for e in store.read_stream(s)] == [1, 2]


def test_a_writer_waiting_behind_an_open_transaction_gets_a_conflict(store: EventLog) -> None:
    s = stream("run")
    store.append(s, [new_event()], NO_STREAM)
    holding = threading.Event()
    release = threading.Event()

    def first() -> None:
        with store.transaction() as tx:
            tx.append(s, [new_event()], 1)
            holding.set()
            release.wait(30)

    t = threading.Thread(target=first)
    t.start()
    assert holding.wait(10)
    second: list[BaseException] = []

    def late_writer() -> None:
        try:
            store.append(s, [new_event()], 1)
        except BaseException as exc:
            second.append(exc)

    w = threading.Thread(target=late_writer)
    w.start()
    release.set()
    t.join(30)
    w.join(30)
    assert len(second) == 1 and isinstance(second[0], ConcurrencyError)
    assert [e.version for e in store.read_stream(s)] == [1, 2]


def test_a_repeated_event_id_is_stored_once_even_with_a_stale_expected_version(store: EventLog) -> None:
    s = stream("run")
    batch = [new_event(), new_event()]
    first = store.append(s, batch, NO_STREAM)
    store.append(s, [new_event()], 2)  # the stream moves on
    head = store.head_position()

    retried = store.append(s, batch, NO_STREAM)

    assert retried == AppendResult(first.last_position, first.last_version, appended=False)
    assert store.head_position() == head
    assert [e.event_id for e in store.read_stream(s)][:2] == [e.event_id for e in batch]
    assert store.stream_version(s) == 3


def test_concurrent_retries_of_one_append_store_it_once(store: EventLog) -> None:
    s = stream("run")
    batch = [new_event()]
    barrier = threading.Barrier(4)
    results: list[AppendResult] = []

    def retry() -> None:
        barrier.wait()
        results.append(store.append(s, batch, NO_STREAM))

    threads = [threading.Thread(target=retry) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4
    assert sum(r.appended for r in results) == 1
    assert {(r.last_position, r.last_version) for r in results} == {(results[0].last_position, 1)}
    assert len(store.read_stream(s)) == 1


def test_a_batch_with_some_stored_ids_is_refused_whole(store: EventLog) -> None:
    s = stream("run")
    stored = new_event()
    store.append(s, [stored], NO_STREAM)
    head = store.head_position()

    with pytest.raises(DuplicateEventError):
        store.append(s, [new_event(), stored, new_event()], ANY)
    with pytest.raises(DuplicateEventError):
        store.append(stream("other"), [stored], ANY)  # the id lives in another stream

    assert store.head_position() == head
    assert len(store.read_stream(s)) == 1


def test_a_batch_is_atomic_and_contiguous_under_concurrency(store: EventLog) -> None:
    """Batches from several writers never interleave: each occupies consecutive positions."""
    streams = [stream("metrics") for _ in range(3)]
    head = store.head_position()

    def write(s: str) -> None:
        for i in range(10):
            store.append(s, [new_event() for _ in range(50)], i * 50)

    threads = [threading.Thread(target=write, args=(s,)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    everything = store.read_all(head, 10_000)
    assert positions(everything) == list(range(head + 1, head + 1 + 1500))
    for start in range(0, 1500, 50):
        batch = everything[start : start + 50]
        assert len({e.stream_id for e in batch}) == 1
        assert [e.version for e in batch] == list(range(batch[0].version, batch[0].version + 50))
        assert len({e.recorded_at for e in batch}) == 1
    for s in streams:
        assert [e.version for e in store.read_stream(s)] == list(range(1, 501))


def test_empty_and_malformed_appends_are_refused(store: EventLog) -> None:
    s = stream("run")
    with pytest.raises(ValueError):
        store.append(s, [])
    with pytest.raises(ValueError):
        store.append("", [new_event()])
    with pytest.raises(ValueError):
        store.append(s, [new_event()], -1)
    twice = new_event()
    with pytest.raises(ValueError):
        store.append(s, [twice, twice])
    with pytest.raises(ValueError):
        store.append(s, [new_event(type_="x" * 201)])
    assert store.stream_version(s) == 0


# -- transactions ------------------------------------------------------------------


def test_a_transaction_appends_to_several_streams_atomically(store: EventLog) -> None:
    experiment, run_a, run_b = stream("exp"), stream("run"), stream("run")
    head = store.head_position()
    seen: list[int] = []
    unsubscribe = store.on_commit(seen.append)

    with store.transaction() as tx:
        tx.append(experiment, [new_event()], NO_STREAM)
        tx.append(run_a, [new_event(), new_event()], NO_STREAM)
        result = tx.append(run_b, [new_event()], NO_STREAM)
        assert tx.last_position == head + 4

    unsubscribe()
    assert result.last_position == head + 4
    assert [(e.stream_id, e.version) for e in store.read_all(head)] == [
        (experiment, 1),
        (run_a, 1),
        (run_a, 2),
        (run_b, 1),
    ]
    assert wait_until(lambda: max(seen, default=0) >= head + 4, 5.0)


def test_a_transaction_s_connection_sees_its_own_appends_before_commit(store: EventLog) -> None:
    """Projection writes on `tx.connection` commit with the events: it is the transaction's own session."""
    sql = sql_only(store, "no SQL connection: the in-memory log has no tables beside it")
    s = stream("run")
    head = sql.head_position()
    with sql.transaction() as tx:
        tx.append(s, [new_event()], NO_STREAM)
        assert tx.connection.execute(select(func.max(event_log.c.position))).scalar_one() == head + 1
        assert sql.head_position() == head
    assert sql.head_position() == head + 1


def test_a_retry_inside_the_transaction_that_appended_is_a_no_op(store: EventLog) -> None:
    """The transaction's own appends count before commit: for idempotency, versions and positions."""
    s, other = stream("run"), stream("run")
    batch = [new_event(), new_event()]
    head = store.head_position()
    with store.transaction() as tx:
        first = tx.append(s, batch, NO_STREAM)
        assert tx.append(s, batch, NO_STREAM) == AppendResult(first.last_position, 2, appended=False)
        assert tx.last_position == first.last_position
        with pytest.raises(DuplicateEventError):
            tx.append(other, batch[:1], NO_STREAM)
        with pytest.raises(ConcurrencyError):
            tx.append(s, [new_event()], NO_STREAM)
        assert tx.append(s, [new_event()], 2) == AppendResult(head + 3, 3, appended=True)
        assert tx.append(other, [new_event()], NO_STREAM) == AppendResult(head + 4, 1, appended=True)
    assert [(e.stream_id, e.version) for e in store.read_all(head)] == [(s, 1), (s, 2), (s, 3), (other, 1)]


def test_a_failed_transaction_leaves_nothing(store: EventLog) -> None:
    a, b = stream("exp"), stream("run")
    head = store.head_position()

    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.append(a, [new_event()], NO_STREAM)
        tx.append(b, [new_event()], NO_STREAM)
        raise RuntimeError("the command failed after appending")

    store.append(b, [new_event()], NO_STREAM)
    with pytest.raises(ConcurrencyError), store.transaction() as tx:
        tx.append(a, [new_event()], NO_STREAM)
        tx.append(b, [new_event()], NO_STREAM)  # b exists: the whole unit of work is refused

    assert store.stream_version(a) == 0
    assert store.stream_version(b) == 1
    # Positions stay gap-free: the rolled back ones are handed out again.
    assert [e.position for e in store.read_all(head)] == [head + 1]


def test_reads_do_not_wait_for_an_open_transaction(store: EventLog) -> None:
    """Projections read the log while their own write transaction is open (one thread)."""
    s = stream("run")
    store.append(s, [new_event()], NO_STREAM)
    head = store.head_position()
    with store.transaction() as tx:
        tx.append(s, [new_event()], 1)
        started = time.monotonic()
        assert store.head_position() == head  # not committed yet
        assert len(store.read_all(head - 1)) == 1
        assert store.stream_version(s) == 1
        assert time.monotonic() - started < 2.0
    assert store.stream_version(s) == 2


# -- reading --------------------------------------------------------------------------


def test_read_stream_pages_by_version(store: EventLog) -> None:
    s = stream("logs")
    store.append(s, [new_event() for _ in range(7)], NO_STREAM)
    assert [e.version for e in store.read_stream(s, after_version=2, limit=3)] == [3, 4, 5]
    assert [e.version for e in store.read_stream(s, after_version=5)] == [6, 7]
    assert store.read_stream(s, after_version=7) == []
    assert store.read_stream(stream("absent")) == []


def test_read_all_filters_by_stream_correlation_and_type_in_position_order(store: EventLog) -> None:
    exp1, exp2 = f"exp-{uuid.uuid4().hex[:8]}", f"exp-{uuid.uuid4().hex[:8]}"
    run1, run2, run3 = stream("run"), stream("run"), stream("run")
    head = store.head_position()
    store.append(run1, [new_event("A", exp1), new_event("B", exp1)])
    store.append(run2, [new_event("A", exp2)])
    store.append(run1, [new_event("C", exp1)])
    store.append(run3, [new_event("B", None)])

    def shape(events: list[RecordedEvent]) -> list[tuple[str, str]]:
        return [(e.stream_id, e.type) for e in events]

    everything = store.read_all(head)
    assert positions(everything) == list(range(head + 1, head + 6))
    assert shape(store.read_all(head, stream_ids=[run1, run3])) == [(run1, "A"), (run1, "B"), (run1, "C"), (run3, "B")]
    assert shape(store.read_all(head, correlation_id=exp1)) == [(run1, "A"), (run1, "B"), (run1, "C")]
    assert shape(store.read_all(head, correlation_id=exp2)) == [(run2, "A")]
    assert shape(store.read_all(head, types=["B"])) == [(run1, "B"), (run3, "B")]
    assert shape(store.read_all(head, correlation_id=exp1, types=["A", "C"])) == [(run1, "A"), (run1, "C")]
    assert shape(store.read_all(head, stream_ids=[run1], correlation_id=exp1, types=["C"])) == [(run1, "C")]
    assert shape(store.read_all(head + 2, 2)) == [(run2, "A"), (run1, "C")]
    assert store.read_all(head, stream_ids=[]) == []
    assert store.read_all(head + 5) == []
    with pytest.raises(ValueError):
        store.read_all(head, 0)


def test_read_all_until_reads_a_window_of_positions(store: EventLog) -> None:
    run1, run2 = stream("run"), stream("run")
    head = store.head_position()
    store.append(run1, [new_event("A"), new_event("B"), new_event("A")])
    store.append(run2, [new_event("B"), new_event("A")])

    def shape(events: list[RecordedEvent]) -> list[tuple[int, str]]:
        return [(e.position - head, e.type) for e in events]

    assert shape(store.read_all(head, until=head + 3)) == [(1, "A"), (2, "B"), (3, "A")]
    # A filtered window: the positions in it that do not match are simply not there.
    assert shape(store.read_all(head, types=["B"], until=head + 3)) == [(2, "B")]
    assert shape(store.read_all(head + 2, types=["A"], until=head + 5)) == [(3, "A"), (5, "A")]
    assert shape(store.read_all(head + 1, 1, until=head + 5)) == [(2, "B")]
    assert store.read_all(head + 3, until=head + 3) == []
    assert store.read_all(head, types=["C"], until=head + 5) == []


# -- subscribing ----------------------------------------------------------------------


def test_read_followed_takes_every_opener_and_the_followed_correlations_only(store: EventLog) -> None:
    exp1, exp2 = f"exp-{uuid.uuid4().hex[:8]}", f"exp-{uuid.uuid4().hex[:8]}"
    run1, run2 = stream("run"), stream("run")
    head = store.head_position()
    store.append(stream("experiment"), [new_event("Open", exp1)])
    store.append(run1, [new_event("A", exp1), new_event("Z", exp1)])
    store.append(stream("experiment"), [new_event("Open", exp2)])
    store.append(run2, [new_event("A", exp2), new_event("B", exp2)])

    def read(after: int, limit: int, followed: list[str]) -> list[tuple[str, str | None]]:
        events = store.read_followed(after, limit, openers=["Open"], types=["A", "B"], correlation_ids=followed)
        return [(e.type, e.correlation_id) for e in events]

    assert read(head, 100, []) == [("Open", exp1), ("Open", exp2)]
    assert read(head, 100, [exp1]) == [("Open", exp1), ("A", exp1), ("Open", exp2)]
    assert read(head, 100, [exp1, exp2]) == [("Open", exp1), ("A", exp1), ("Open", exp2), ("A", exp2), ("B", exp2)]
    assert read(head + 1, 2, [exp2]) == [("Open", exp2), ("A", exp2)]
    with pytest.raises(ValueError):
        read(head, 0, [exp1])


def test_a_subscriber_sees_every_event_of_concurrent_writers_once_in_order(store: EventLog) -> None:
    """8 writers x 500 single-event appends race a live subscriber: nothing lost, nothing twice."""
    writers, per_writer = 8, 500
    head = store.head_position()
    streams = [stream(f"w{i}") for i in range(writers)]

    with Subscriber(store, head, batch_size=100) as sub:

        def write(s: str) -> None:
            for version in range(per_writer):
                store.append(s, [new_event()], version)

        threads = [threading.Thread(target=write, args=(s,)) for s in streams]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        got = sub.wait_for(writers * per_writer, timeout=30)

    assert positions(got) == list(range(head + 1, head + 1 + writers * per_writer))
    for s in streams:
        assert [e.version for e in got if e.stream_id == s] == list(range(1, per_writer + 1))


def _lock_waiters(store: EventLog) -> int:
    """Sessions of this database waiting on a lock (PostgreSQL); SQLite and memory do not say."""
    if not isinstance(store, EventStore) or store.dialect != "postgresql":
        return 0
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def test_a_late_commit_is_delivered_not_skipped(store: EventLog) -> None:
    """A transaction takes the next position, then is slow to commit while later appends start.

    On a log that hands out positions from a sequence or autoincrement
    without ordering commits, the later appends would take the following
    positions and commit first; the subscriber would read them and move its
    cursor past the slow transaction's position, and when that finally
    commits, below the cursor, it is never delivered: this test would then
    time out waiting for it (or see the positions out of order). The slow
    transaction is held open (threading.Event) until the later appends are
    either visible to the subscriber (the naive log) or observably waiting
    behind it (PostgreSQL sessions waiting on a lock); SQLite and the in-memory log have a
    single writer, so there they can only wait, and a short window suffices.
    """
    head = store.head_position()
    late, later_count = stream("late"), 6
    in_transaction = threading.Event()
    release = threading.Event()

    with Subscriber(store, head) as sub:

        def slow_commit() -> None:
            with store.transaction() as tx:
                tx.append(late, [new_event()], NO_STREAM)
                in_transaction.set()
                release.wait(30)

        slow = threading.Thread(target=slow_commit)
        slow.start()
        assert in_transaction.wait(10)
        later = [
            threading.Thread(target=store.append, args=(stream("later"), [new_event()], NO_STREAM))
            for _ in range(later_count)
        ]
        for t in later:
            t.start()
        wait_until(lambda: sub.count() > 0 or _lock_waiters(store) >= later_count, timeout=1.0)
        release.set()
        slow.join(30)
        for t in later:
            t.join(30)
        got = sub.wait_for(later_count + 1, timeout=10)

    assert positions(got) == list(range(head + 1, head + later_count + 2)), "an event was skipped or reordered"
    assert got[0].stream_id == late


def test_a_subscriber_wakes_promptly_on_an_append(store: EventLog) -> None:
    s = stream("run")
    head = store.head_position()
    # Polling alone would take a minute: only the commit notification can wake it in time.
    with Subscriber(store, head, poll_interval=60) as sub:
        assert sub.wait_for(1, timeout=0.3) == []
        writer = threading.Thread(target=store.append, args=(s, [new_event()]))
        writer.start()
        got = sub.wait_for(1, timeout=3)
        writer.join(10)
    assert [e.stream_id for e in got] == [s]


def test_a_filtered_subscription_follows_one_experiment_and_ends_on_stop(store: EventLog) -> None:
    experiment = f"exp-{uuid.uuid4().hex[:8]}"
    run = stream("run")
    head = store.head_position()
    store.append(run, [new_event("A", experiment)])
    with Subscriber(store, head, poll_interval=60, correlation_id=experiment) as sub:
        assert [e.type for e in sub.wait_for(1, timeout=5)] == ["A"]
        store.append(stream("other"), [new_event("X", "another-experiment")])
        store.append(run, [new_event("B", experiment)])
        got = sub.wait_for(2, timeout=5)
        started = time.monotonic()
        sub.close()
        assert time.monotonic() - started < 2.0
    assert [e.type for e in got] == ["A", "B"]


def test_wait_for_append_blocks_until_the_head_moves(store: EventLog) -> None:
    head = store.head_position()
    started = time.monotonic()
    assert store.wait_for_append(head, timeout=0.2) is False
    assert time.monotonic() - started >= 0.2
    assert store.wait_for_append(head - 1, timeout=0) is True

    writer = threading.Timer(0.05, store.append, args=(stream("run"), [new_event()]))
    writer.start()
    started = time.monotonic()
    assert store.wait_for_append(head, timeout=30) is True
    assert time.monotonic() - started < 5.0
    writer.join(10)


def test_on_commit_calls_back_with_the_head_until_unsubscribed(store: EventLog) -> None:
    seen: list[int] = []
    unsubscribe = store.on_commit(seen.append)
    result = store.append(stream("run"), [new_event()])
    assert wait_until(lambda: result.last_position in seen, 5.0)
    unsubscribe()
    probe: list[int] = []
    store.on_commit(probe.append)  # called in the same round as a wrongly kept callback would be
    after = store.append(stream("run"), [new_event()]).last_position
    assert wait_until(lambda: after in probe, 5.0)
    assert after not in seen


def test_an_append_through_another_store_wakes_subscribers_via_notify(pg_session_url: str) -> None:
    """Two replicas on one PostgreSQL database: LISTEN/NOTIFY carries the wake-up across.

    (SQLite is the single-process embedded default: other processes are only
    seen by polling.)
    """
    first, second = EventStore.open(pg_session_url), EventStore.open(pg_session_url)
    try:
        head = first.head_position()
        seen: list[int] = []
        first.on_commit(seen.append)
        with Subscriber(first, head, poll_interval=60) as sub:
            result = second.append(stream("run"), [new_event()])
            got = sub.wait_for(1, timeout=5)
        assert positions(got) == [result.last_position]
        assert wait_until(lambda: result.last_position in seen, 5.0)
        assert first.wait_for_append(head, timeout=5)
    finally:
        first.close()
        second.close()


def test_subscribers_keep_being_woken_after_the_listener_connection_drops(pg_session_url: str) -> None:
    """A dropped LISTEN session reconnects by itself; nothing appended meanwhile is missed."""
    first, second = EventStore.open(pg_session_url), EventStore.open(pg_session_url)
    try:
        head = first.head_position()
        first.on_commit(lambda _position: None)  # returns once the listener is in place
        with Subscriber(first, head, poll_interval=60) as sub:
            with first.engine.connect() as conn:
                dropped = conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": LISTENER_APPLICATION_NAME},
                ).scalar_one()
            assert dropped >= 1
            result = second.append(stream("run"), [new_event()])
            got = sub.wait_for(1, timeout=10)
        assert positions(got) == [result.last_position]
    finally:
        first.close()
        second.close()
