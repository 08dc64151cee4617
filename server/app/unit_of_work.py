"""One use case's trip to the log: what it reads, what it appends, and what was committed.

A handler appends through its unit of work, never through the event store
directly, so that once it returns the bus knows exactly which events were
committed (and on which stream) and dispatches their effects; nothing else
has to tell anyone that the log changed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from google.protobuf.message import Message

from runyard.server.app.errors import NotFound
from runyard.server.domain import events as ev
from runyard.server.store import (
    ANY,
    AppendResult,
    ConcurrencyError,
    EventLog,
    EventLogTransaction,
    ExpectedVersion,
    NewEvent,
)

#: Times a decision is made again on a stream another writer changed meanwhile.
MAX_RETRIES = 20


@dataclass(frozen=True)
class Committed:
    """One event a handler's commit stored, with its stream: what the bus dispatches effects from."""

    stream: str
    event: Message


@dataclass(frozen=True)
class Outcome:
    """What a command appended: its events and the log position to wait for (0: nothing appended)."""

    events: Sequence[Message]
    position: int


def new_events(
    messages: Sequence[Message], correlation_id: str | None, ids: Sequence[uuid.UUID] | None = None
) -> list[NewEvent]:
    out = []
    for i, msg in enumerate(messages):
        type_, data = ev.encode(msg)
        event_id = ids[i] if ids is not None else uuid.uuid4()
        out.append(NewEvent(type=type_, data=data, event_id=event_id, correlation_id=correlation_id))
    return out


class Batch:
    """Appends that commit together (`UnitOfWork.transaction`)."""

    def __init__(self, tx: EventLogTransaction, staged: list[Committed]) -> None:
        self._tx = tx
        self._staged = staged

    @property
    def last_position(self) -> int:
        return self._tx.last_position

    def append(
        self,
        stream: str,
        messages: Sequence[Message],
        expected: ExpectedVersion = ANY,
        correlation_id: str | None = None,
        ids: Sequence[uuid.UUID] | None = None,
    ) -> AppendResult:
        result = self._tx.append(stream, new_events(messages, correlation_id, ids), expected)
        if result.appended:
            self._staged.extend(Committed(stream, m) for m in messages)
        return result


class UnitOfWork:
    """Reads and appends of one command; `committed` holds what its commits stored, in order."""

    def __init__(self, store: EventLog) -> None:
        self.store = store
        self.committed: list[Committed] = []

    def read(self, stream: str, limit: int | None = None) -> list[Message]:
        return [ev.decode(r.type, r.data) for r in self.store.read_stream(stream, limit=limit)]

    def exists(self, stream: str) -> bool:
        return self.store.stream_version(stream) > 0

    def first_position(self, stream: str) -> int:
        """The log position of the stream's first event (0 when it has none)."""
        first = self.store.read_stream(stream, limit=1)
        return first[0].position if first else 0

    def append(
        self,
        stream: str,
        messages: Sequence[Message],
        expected: ExpectedVersion = ANY,
        correlation_id: str | None = None,
        ids: Sequence[uuid.UUID] | None = None,
    ) -> AppendResult:
        with self.transaction() as batch:
            return batch.append(stream, messages, expected, correlation_id, ids)

    @contextmanager
    def transaction(self) -> Iterator[Batch]:
        """Appends inside commit together; they count as committed only once the commit succeeded."""
        staged: list[Committed] = []
        with self.store.transaction() as tx:
            yield Batch(tx, staged)
        self.committed.extend(staged)


class Aggregate(Protocol):
    """What the generic load needs of an aggregate: replayed from its stream's events."""

    version: int


A = TypeVar("A", bound=Aggregate)


def load(uow: UnitOfWork, stream: str, replay: Callable[[Iterable[Message]], A], kind: str, ident: str) -> A:
    """The aggregate as its stream leaves it; NotFound(kind, ident) when the stream is empty."""
    events = uow.read(stream)
    if not events:
        raise NotFound(kind, ident)
    return replay(events)


def change(
    uow: UnitOfWork,
    stream: str,
    replay: Callable[[Iterable[Message]], A],
    decide: Callable[[A], list[Message]],
    *,
    kind: str,
    ident: str,
    correlation: Callable[[A], str | None] = lambda _: None,
    event_ids: Callable[[int], list[uuid.UUID]] | None = None,
) -> Outcome:
    """Load, decide on the latest state, append against the version decided on; again on a conflict.

    Every decision is checked against the stream version it was made on; when
    another writer got there first the decision is simply made again on the new
    state (optimistic concurrency), so two replicas never both apply a change.
    """
    for _ in range(MAX_RETRIES):
        aggregate = load(uow, stream, replay, kind, ident)
        new = decide(aggregate)
        if not new:
            return Outcome([], 0)
        ids = event_ids(len(new)) if event_ids else None
        try:
            result = uow.append(stream, new, aggregate.version, correlation(aggregate), ids)
        except ConcurrencyError:
            continue
        return Outcome(new, result.last_position)
    raise ConcurrencyError(stream, -1, -1)
