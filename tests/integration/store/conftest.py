"""Fixtures of the event log tests: a store per backend, and a subscriber running in a thread.

`store` runs a test once on each backend of the `EventLog` protocol: in memory,
on the session's PostgreSQL database and on a SQLite file of its own (the
model of pyeventsourcing's tests/persistence.py: one set of cases, every
backend). A case that only means something on a database says so with
`sql_only(store, why)`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from runyard.server.store import EventLog, EventStore, InMemoryEventStore, NewEvent, RecordedEvent
from tests.support.databases import pg_session_url, sqlite_url  # noqa: F401  (fixtures)

BACKENDS = ["memory", "postgresql", "sqlite"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    """The test runs once per backend: in memory, on the session's PostgreSQL database, on its own SQLite file."""
    opened: EventLog
    if request.param == "memory":
        opened = InMemoryEventStore()
    elif request.param == "postgresql":
        opened = EventStore.open(str(request.getfixturevalue("pg_session_url")))
    else:
        opened = EventStore.open(sqlite_url(tmp_path))
    try:
        yield opened
    finally:
        opened.close()


def sql_only(store: EventLog, why: str) -> EventStore:
    """Skip the case on a backend without a database, saying why; the store as an EventStore otherwise."""
    if not isinstance(store, EventStore):
        pytest.skip(f"{type(store).__name__}: {why}")
    return store


def new_event(type_: str = "runyard.v1.Test", correlation_id: str | None = None, data: bytes = b"") -> NewEvent:
    return NewEvent(type=type_, data=data or uuid.uuid4().bytes, event_id=uuid.uuid4(), correlation_id=correlation_id)


def stream(name: str) -> str:
    """A stream id no other test uses: the PostgreSQL database is shared by the session."""
    return f"{name}-{uuid.uuid4().hex[:10]}"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; returns whether it held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


class Subscriber:
    """Runs `EventLog.subscribe` in a thread and collects what it yields."""

    def __init__(self, store: EventLog, after: int, poll_interval: float = 0.05, **filters: object) -> None:
        self.events: list[RecordedEvent] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self._cond = threading.Condition()
        self._store = store
        self._after = after
        self._poll_interval = poll_interval
        self._filters = filters
        self._thread = threading.Thread(target=self._run, name="test-subscriber", daemon=True)

    def __enter__(self) -> Subscriber:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            for event in self._store.subscribe(
                self._after,
                stop=self.stop,
                poll_interval=self._poll_interval,
                **self._filters,  # type: ignore[arg-type]
            ):
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()
        except BaseException as exc:  # surfaced by close()
            self.error = exc

    def count(self) -> int:
        with self._cond:
            return len(self.events)

    def wait_for(self, n: int, timeout: float) -> list[RecordedEvent]:
        """Wait until at least `n` events arrived (or the deadline); returns what arrived."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.events) >= n or self.error is not None, timeout)
            return list(self.events)

    def close(self, timeout: float = 5.0) -> None:
        self.stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "subscribe() did not end after stop was set"
        if self.error is not None:
            raise self.error


def positions(events: Sequence[RecordedEvent]) -> list[int]:
    return [e.position for e in events]
