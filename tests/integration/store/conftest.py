"""Fixtures of the event log tests: a store per backend, and a subscriber running in a thread."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import pytest

from runyard.server.store import EventStore, NewEvent, RecordedEvent
from tests.support.databases import database_url, pg_session_url  # noqa: F401  (fixtures)


@pytest.fixture
def store(database_url: str) -> Iterator[EventStore]:  # noqa: F811
    opened = EventStore.open(database_url)
    try:
        yield opened
    finally:
        opened.close()


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
    """Runs `EventStore.subscribe` in a thread and collects what it yields."""

    def __init__(self, store: EventStore, after: int, poll_interval: float = 0.05, **filters: object) -> None:
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
