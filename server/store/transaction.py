"""Appending inside one database transaction: the unit of work.

Positions must become visible to readers in position order (see the package
docstring), so an append first takes the log's write lock for the rest of the
transaction, then, under it, reads what is current and writes:

1. lock: PostgreSQL takes a transaction-scoped advisory lock; on SQLite the
   transaction's BEGIN IMMEDIATE holds the database's write lock already;
2. event ids: when all are stored in this stream, answer with their
   positions and append nothing (a retry never conflicts, even when the
   stream has moved on); when only some are, DuplicateEventError;
3. version: with an int expected_version the stream must be exactly there,
   or ConcurrencyError;
4. insert the batch at head+1.. and version+1.., one statement.

Reads after the lock are current: every earlier appender has committed by
the time the lock is ours, and on PostgreSQL each statement of a READ
COMMITTED transaction (and of a VOLATILE function) takes a fresh snapshot.

On PostgreSQL the four steps are the `runyard_append` SQL function created
by revision 0001: one round trip per append, the same as a bare INSERT. A
single-stream `EventStore.append` runs it alone in autocommit, so BEGIN and
COMMIT cost no round trips of their own and the lock is released by the
statement's own commit. On SQLite they run here, where a round trip is a
function call.

The unique constraints (stream_id, version) and (event_id) back the checks
up: if anything ever wrote around the lock, the database still refuses the
duplicate, and that refusal is reported as ConcurrencyError / DuplicateEventError.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, text
from sqlalchemy.exc import IntegrityError

from runyard.storable import is_storable

from .model import (
    ANY,
    AppendResult,
    ConcurrencyError,
    DuplicateEventError,
    ExpectedVersion,
    NewEvent,
    UnstorableText,
)
from .schema import event_log

APPEND_LOCK_KEY = 7_216_315_100
"""PostgreSQL advisory lock key that serializes appenders (per database); runyard_append takes it."""

MAX_NAME_LENGTH = 200
"""Longest stream id, event type and correlation id (the columns' width)."""

MAX_BATCH = 10_000
"""Most events in one append (SQLite binds every event id of a batch as one parameter)."""

_PG_APPEND = text(
    "SELECT outcome, last_position, last_version, stored FROM runyard_append("
    ":stream_id, :expected_version, CAST(:event_ids AS uuid[]), CAST(:types AS text[]), "
    "CAST(:data AS bytea[]), CAST(:correlation_ids AS text[]), :recorded_at)"
)

_t = event_log.c
_dups = (
    select(
        func.count().label("n"),
        func.max(_t.position).label("position"),
        func.max(_t.version).label("version"),
        func.min(_t.stream_id).label("first_stream"),
        func.max(_t.stream_id).label("last_stream"),
    )
    .where(_t.event_id.in_(bindparam("event_ids", expanding=True)))
    .subquery()
)
# SQLite, one statement: the log head, the stream's version and what is stored of the batch's ids.
_SQLITE_PROBE = select(
    select(func.coalesce(func.max(_t.position), 0)).scalar_subquery().label("head"),
    select(func.coalesce(func.max(_t.version), 0))
    .where(_t.stream_id == bindparam("stream_id"))
    .scalar_subquery()
    .label("stream_version"),
    _dups.c.n,
    _dups.c.position,
    _dups.c.version,
    _dups.c.first_stream,
    _dups.c.last_stream,
)
_SQLITE_INSERT = event_log.insert()


def check_batch(stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion) -> None:
    """Refuse malformed appends the same way on both databases, before they reach one.

    The envelope's text (stream id, type, correlation id) goes into text
    columns: NUL or a lone surrogate there is refused (UnstorableText), on
    SQLite too, where it would fit but PostgreSQL's log could never hold it.
    The payload is bytes and never refused here; projectors make its text
    storable (runyard.storable).
    """
    if not stream_id or len(stream_id) > MAX_NAME_LENGTH:
        raise ValueError(f"stream_id must be 1 to {MAX_NAME_LENGTH} characters, not {stream_id!r}")
    if not is_storable(stream_id):
        raise UnstorableText(f"stream_id {stream_id!r} holds NUL or a lone surrogate, which the log cannot store")
    if not events or len(events) > MAX_BATCH:
        raise ValueError(f"append 1 to {MAX_BATCH} events to {stream_id!r}, not {len(events)}")
    if expected_version is not ANY and (
        not isinstance(expected_version, int) or isinstance(expected_version, bool) or expected_version < 0
    ):
        raise ValueError(f"expected_version must be ANY or an int >= 0, not {expected_version!r}")
    if len({e.event_id for e in events}) != len(events):
        raise ValueError(f"append to {stream_id!r} repeats an event id within the batch")
    for e in events:
        if not isinstance(e.event_id, uuid.UUID):
            raise TypeError(f"event_id must be a uuid.UUID, not {type(e.event_id).__name__}")
        if not e.type or len(e.type) > MAX_NAME_LENGTH:
            raise ValueError(f"event type must be 1 to {MAX_NAME_LENGTH} characters, not {e.type!r}")
        if e.correlation_id is not None and len(e.correlation_id) > MAX_NAME_LENGTH:
            raise ValueError(f"correlation_id is longer than {MAX_NAME_LENGTH} characters")
        if not is_storable(e.type) or (e.correlation_id is not None and not is_storable(e.correlation_id)):
            raise UnstorableText(
                f"an event of {stream_id!r} holds NUL or a lone surrogate in its type or correlation id"
            )
        if not isinstance(e.data, bytes):
            raise TypeError(f"event data must be bytes, not {type(e.data).__name__}")


class Transaction:
    """Appends to any number of streams that commit, or roll back, together.

    `connection` is the transaction's own connection, for writes that must
    commit atomically with the events (on SQLite it holds the write lock).
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.last_position = 0
        self._postgresql = connection.dialect.name == "postgresql"

    def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion = ANY
    ) -> AppendResult:
        check_batch(stream_id, events, expected_version)
        recorded_at = datetime.now(UTC)
        try:
            if self._postgresql:
                result = self._append_postgresql(stream_id, events, expected_version, recorded_at)
            else:
                result = self._append_sqlite(stream_id, events, expected_version, recorded_at)
        except IntegrityError as exc:
            if "event_id" in str(exc.orig):
                raise DuplicateEventError(stream_id, "an event id is stored already") from exc
            raise ConcurrencyError(stream_id, expected_version, -1) from exc
        if result.appended:
            self.last_position = result.last_position
        return result

    def _append_postgresql(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion, at: datetime
    ) -> AppendResult:
        row = self.connection.execute(
            _PG_APPEND,
            {
                "stream_id": stream_id,
                "expected_version": None if expected_version is ANY else expected_version,
                "event_ids": [e.event_id for e in events],
                "types": [e.type for e in events],
                "data": [e.data for e in events],
                "correlation_ids": [e.correlation_id for e in events],
                "recorded_at": at,
            },
        ).one()
        outcome, position, version, stored = str(row[0]), int(row[1]), int(row[2]), int(row[3])
        if outcome == "appended":
            return AppendResult(position, version, appended=True)
        if outcome == "noop":
            return AppendResult(position, version, appended=False)
        if outcome == "conflict":
            raise ConcurrencyError(stream_id, expected_version, version)
        raise _duplicate(stream_id, stored, len(events), elsewhere=outcome == "duplicate_elsewhere")

    def _append_sqlite(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion, at: datetime
    ) -> AppendResult:
        conn = self.connection
        probe = conn.execute(_SQLITE_PROBE, {"stream_id": stream_id, "event_ids": [e.event_id for e in events]}).one()
        head, current, stored = int(probe.head), int(probe.stream_version), int(probe.n)
        if stored:
            in_stream = probe.first_stream == probe.last_stream == stream_id
            if stored == len(events) and in_stream:
                return AppendResult(int(probe.position), int(probe.version), appended=False)
            raise _duplicate(stream_id, stored, len(events), elsewhere=not in_stream)
        if expected_version is not ANY and expected_version != current:
            raise ConcurrencyError(stream_id, expected_version, current)
        rows: list[dict[str, Any]] = [
            {
                "position": head + i,
                "stream_id": stream_id,
                "version": current + i,
                "event_id": e.event_id,
                "type": e.type,
                "data": e.data,
                "correlation_id": e.correlation_id,
                "recorded_at": at,
            }
            for i, e in enumerate(events, start=1)
        ]
        conn.execute(_SQLITE_INSERT, rows)
        return AppendResult(head + len(events), current + len(events), appended=True)


def _duplicate(stream_id: str, stored: int, total: int, *, elsewhere: bool) -> DuplicateEventError:
    where = " (some in another stream)" if elsewhere else ""
    return DuplicateEventError(stream_id, f"{stored} of the {total} event ids are stored already{where}")
