"""The event log as the rest of the server sees it: a Protocol that every backend meets.

Handlers and projections depend on these operations, not on SQL, so that a
use case can be tested against `InMemoryEventStore` in microseconds and run
against `EventStore` (PostgreSQL or SQLite) in production. Every backend
keeps the same guarantees, checked by one contract suite
(tests/integration/store/test_event_log_contract.py): optimistic concurrency
per stream, idempotent appends by event id, gap-free global positions in
commit order, atomic multi-stream transactions, thread safety, and
subscribers woken at commit.

SQL-only capabilities (the engines the read models write with, a
transaction's `connection`) stay on `EventStore` and its `Transaction`: code
that needs them needs a database, and says so by naming those types.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from .model import ANY, AppendResult, ExpectedVersion, NewEvent, RecordedEvent


class EventLogTransaction(Protocol):
    """A unit of work's appends: to any number of streams, committed together or not at all."""

    last_position: int
    """The position of this unit of work's last appended event; 0 while it appended nothing."""

    def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion = ANY
    ) -> AppendResult: ...


class EventLog(Protocol):
    """Append, read and follow the event log. Implementations are thread-safe: one per process."""

    def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion = ANY
    ) -> AppendResult:
        """Append to one stream atomically: a retry of stored ids is a no-op that answers with their
        positions, some stored ids are DuplicateEventError, a stale `expected_version` ConcurrencyError."""
        ...

    def transaction(self) -> AbstractContextManager[EventLogTransaction]:
        """Appends to several streams that commit together on exit, or not at all on an exception.
        It holds the log's write lock until it ends: keep it short."""
        ...

    def read_stream(self, stream_id: str, after_version: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        """One stream's events with version > `after_version`, in version order."""
        ...

    def stream_version(self, stream_id: str) -> int:
        """The stream's last version; 0 when it does not exist."""
        ...

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
        ...

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
        ...

    def head_position(self) -> int:
        """The position of the last committed event; 0 for an empty log."""
        ...

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
        """The stored (matching) events after `after_position`, then live ones as they commit, each once,
        in position order; ends soon after `stop` is set or the log is closed."""
        ...

    def wait_for_append(self, after_position: int, timeout: float) -> bool:
        """Block until the head passes `after_position`; False when `timeout` ran out first."""
        ...

    def on_commit(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call `callback(head)` after each commit that grows the log; returns the unsubscribe function."""
        ...

    def close(self) -> None:
        """Wake every waiter and release what the log holds; idempotent."""
        ...


if TYPE_CHECKING:
    from .event_store import EventStore
    from .memory import InMemoryEventStore

    def _backends_conform(sql: EventStore, memory: InMemoryEventStore) -> tuple[EventLog, EventLog]:
        """mypy proves here that each backend is an EventLog (a Protocol is checked where it is used)."""
        return sql, memory
