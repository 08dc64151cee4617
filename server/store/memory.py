"""The event log in this process's memory: for handler tests that need the log's rules, not a database.

It keeps every guarantee of `EventStore` that can hold inside one process,
and the contract suite checks them on it as on PostgreSQL and SQLite:
optimistic concurrency per stream, idempotent appends by event id (a retry
answers with the stored positions; a batch with only some ids stored, or
ids stored in another stream, is DuplicateEventError), gap-free positions in
commit order, transactions over several streams that commit whole or leave
nothing, thread safety, and subscribers, waiters and `on_commit` callbacks
woken at commit (in the committing thread, so `notify.commit_is_quiet()`
reads the same as on the SQL backends).

How: as on the SQL backends, a transaction takes the log's one write lock at
its first append and holds it until it ends, so transactions commit one
after the other and every position is the head + 1 of its time. Its appends
are staged and join the log at commit, under a short lock that readers take
too; readers never wait for an open transaction and never see its events.

Nothing is durable and nothing is shared between processes: other processes
and NOTIFY have no meaning here.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from .following import follow
from .model import (
    ANY,
    AppendResult,
    ConcurrencyError,
    DuplicateEventError,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
)
from .notify import HeadTracker
from .transaction import check_batch


class NestedTransactionError(RuntimeError):
    """A thread that holds the log's write lock asked for it again: waiting would deadlock on itself.

    The SQLite backend refuses the same way (its OperationalError "already
    has a write transaction"); on PostgreSQL the second append would wait on
    the first forever.
    """


class InMemoryEventTransaction:
    """Appends staged by one unit of work; they join the log when the transaction commits."""

    def __init__(self, store: InMemoryEventStore) -> None:
        self._store = store
        self._holds_lock = False
        self._staged: list[RecordedEvent] = []
        self._staged_ids: dict[uuid.UUID, RecordedEvent] = {}
        self._staged_versions: dict[str, int] = {}
        self.last_position = 0

    def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion = ANY
    ) -> AppendResult:
        check_batch(stream_id, events, expected_version)
        if not self._holds_lock:
            self._store._take_write_lock()
            self._holds_lock = True
        store = self._store
        # Under the write lock the committed log cannot change: read it, then our own staged events.
        stored = [store._ids.get(e.event_id) or self._staged_ids.get(e.event_id) for e in events]
        found = [r for r in stored if r is not None]
        if found:
            in_stream = all(r.stream_id == stream_id for r in found)
            if len(found) == len(events) and in_stream:
                return AppendResult(max(r.position for r in found), max(r.version for r in found), appended=False)
            where = "" if in_stream else " (some in another stream)"
            raise DuplicateEventError(
                stream_id, f"{len(found)} of the {len(events)} event ids are stored already{where}"
            )
        current = self._staged_versions.get(stream_id)
        if current is None:
            current = len(store._streams.get(stream_id, ()))
        if expected_version is not ANY and expected_version != current:
            raise ConcurrencyError(stream_id, expected_version, current)
        head = len(store._log) + len(self._staged)
        at = datetime.now(UTC)
        for i, e in enumerate(events, start=1):
            recorded = RecordedEvent(head + i, stream_id, current + i, e.event_id, e.type, e.data, e.correlation_id, at)
            self._staged.append(recorded)
            self._staged_ids[e.event_id] = recorded
        self._staged_versions[stream_id] = current + len(events)
        self.last_position = head + len(events)
        return AppendResult(self.last_position, current + len(events), appended=True)

    def _commit(self) -> int:
        """Publish the staged events; the last position, or 0 when there was nothing to append."""
        if not self._holds_lock:
            return 0
        try:
            self._store._publish(self._staged)
        finally:
            self._release()
        return self._staged[-1].position if self._staged else 0

    def _release(self) -> None:
        if self._holds_lock:
            self._holds_lock = False
            self._store._release_write_lock()


class InMemoryEventStore:
    """An `EventLog` held in lists and dicts; thread-safe, share one per test."""

    def __init__(self) -> None:
        self._write_lock = threading.Lock()
        self._writer: int | None = None  # the thread holding the write lock
        self._state = threading.Lock()  # guards the committed log while it grows; held briefly
        self._log: list[RecordedEvent] = []  # position p is self._log[p - 1]
        self._streams: dict[str, list[RecordedEvent]] = {}  # version v is [v - 1]
        self._ids: dict[uuid.UUID, RecordedEvent] = {}
        self._tracker = HeadTracker()
        self._closed = False

    # -- writing -------------------------------------------------------------

    def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion = ANY
    ) -> AppendResult:
        """Append `events` to one stream, atomically (see `EventLog.append`)."""
        with self.transaction() as tx:
            return tx.append(stream_id, events, expected_version)

    @contextmanager
    def transaction(self) -> Iterator[InMemoryEventTransaction]:
        """A unit of work: its appends commit together on exit, or not at all on an exception."""
        tx = InMemoryEventTransaction(self)
        try:
            yield tx
        except BaseException:
            tx._release()
            raise
        position = tx._commit()
        if position:
            self._tracker.advance(position)

    def _take_write_lock(self) -> None:
        if self._writer == threading.get_ident():
            raise NestedTransactionError(
                "this thread already has a write transaction open on the event log: append through it"
            )
        self._write_lock.acquire()
        self._writer = threading.get_ident()

    def _release_write_lock(self) -> None:
        self._writer = None
        self._write_lock.release()

    def _publish(self, staged: Sequence[RecordedEvent]) -> None:
        with self._state:
            for recorded in staged:
                self._log.append(recorded)
                self._streams.setdefault(recorded.stream_id, []).append(recorded)
                self._ids[recorded.event_id] = recorded

    # -- reading -------------------------------------------------------------

    def read_stream(self, stream_id: str, after_version: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        """One stream's events with version > `after_version`, in version order."""
        start = max(after_version, 0)
        with self._state:
            events = self._streams.get(stream_id, [])
            return events[start:] if limit is None else events[start : start + max(limit, 0)]

    def stream_version(self, stream_id: str) -> int:
        """The stream's last version; 0 when it does not exist."""
        with self._state:
            return len(self._streams.get(stream_id, ()))

    def read_all(
        self,
        after_position: int = 0,
        limit: int = 1000,
        *,
        stream_ids: Sequence[str] | None = None,
        correlation_id: str | None = None,
        types: Sequence[str] | None = None,
        until: int | None = None,
    ) -> list[RecordedEvent]:
        """Up to `limit` (matching) events with position in (`after_position`, `until`], in position order."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        if (stream_ids is not None and not stream_ids) or (types is not None and not types):
            return []
        streams = None if stream_ids is None else set(stream_ids)
        kinds = None if types is None else set(types)

        def matches(e: RecordedEvent) -> bool:
            return (
                (streams is None or e.stream_id in streams)
                and (correlation_id is None or e.correlation_id == correlation_id)
                and (kinds is None or e.type in kinds)
            )

        return self._scan(after_position, limit, until, matches)

    def read_followed(
        self,
        after_position: int,
        limit: int,
        *,
        openers: Sequence[str],
        types: Sequence[str],
        correlation_ids: Sequence[str],
    ) -> list[RecordedEvent]:
        """Every event of the `openers` types, and those of `types` correlated with one of `correlation_ids`."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        opening, kinds, followed = set(openers), set(types), set(correlation_ids)

        def matches(e: RecordedEvent) -> bool:
            return e.type in opening or (e.type in kinds and e.correlation_id in followed)

        return self._scan(after_position, limit, None, matches)

    def _scan(
        self, after_position: int, limit: int, until: int | None, matches: Callable[[RecordedEvent], bool]
    ) -> list[RecordedEvent]:
        found: list[RecordedEvent] = []
        with self._state:
            end = len(self._log) if until is None else min(max(until, 0), len(self._log))
            for index in range(max(after_position, 0), end):
                recorded = self._log[index]
                if matches(recorded):
                    found.append(recorded)
                    if len(found) == limit:
                        break
        return found

    def head_position(self) -> int:
        """The position of the last committed event; 0 for an empty log."""
        with self._state:
            return len(self._log)

    # -- following -------------------------------------------------------------

    def subscribe(
        self,
        after_position: int = 0,
        *,
        stop: threading.Event,
        stream_ids: Sequence[str] | None = None,
        correlation_id: str | None = None,
        batch_size: int = 500,
        poll_interval: float = 1.0,
    ) -> Iterator[RecordedEvent]:
        """Every (matching) event after `after_position`, stored then live, each once, in position order.

        Every commit wakes it; `poll_interval` only bounds how long it waits
        before looking at `stop` and the log again.
        """
        return follow(
            self.read_all,
            self.head_position,
            self._tracker,
            lambda: self._closed,
            after_position,
            stop=stop,
            stream_ids=stream_ids,
            correlation_id=correlation_id,
            batch_size=batch_size,
            poll_interval=poll_interval,
        )

    def wait_for_append(self, after_position: int, timeout: float) -> bool:
        """Block until the log head passes `after_position`; False when `timeout` ran out first."""
        if self.head_position() > after_position:
            return True
        if self._closed:
            return False
        return self._tracker.wait_beyond(after_position, timeout) or self.head_position() > after_position

    def on_commit(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call `callback(head_position)` in the committing thread after each commit that grows the log."""
        return self._tracker.add_callback(callback)

    def close(self) -> None:
        """Wake every waiter and end every subscription; the events stay readable."""
        self._closed = True
        self._tracker.close()
