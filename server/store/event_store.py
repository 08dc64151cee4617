"""EventStore: the event log's one entry point for appending, reading and following."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal, cast

from sqlalchemy import Engine, Select, and_, bindparam, func, inspect, or_, select
from sqlalchemy.engine import URL

from .engine import create_store_engine, read_only, snapshot_reads
from .following import follow
from .migrate import migrate_engine
from .model import ANY, AppendResult, ExpectedVersion, NewEvent, RecordedEvent
from .notify import HeadTracker, PostgresListener
from .schema import event_log
from .transaction import Transaction

_t = event_log.c
_COLUMNS = (_t.position, _t.stream_id, _t.version, _t.event_id, _t.type, _t.data, _t.correlation_id, _t.recorded_at)
_HEAD = select(func.coalesce(func.max(_t.position), 0))
_STREAM_VERSION = select(func.coalesce(func.max(_t.version), 0)).where(_t.stream_id == bindparam("stream_id"))
_READ_STREAM = (
    select(*_COLUMNS)
    .where(_t.stream_id == bindparam("stream_id"), _t.version > bindparam("after"))
    .order_by(_t.version)
)
_READ_STREAM_LIMIT = _READ_STREAM.limit(bindparam("limit"))


def _read_all_statement(streams: bool, correlation: bool, types: bool, until: bool) -> Select[Any]:
    stmt = select(*_COLUMNS).where(_t.position > bindparam("after"))
    if until:
        stmt = stmt.where(_t.position <= bindparam("until"))
    if streams:
        stmt = stmt.where(_t.stream_id.in_(bindparam("stream_ids", expanding=True)))
    if correlation:
        stmt = stmt.where(_t.correlation_id == bindparam("correlation_id"))
    if types:
        stmt = stmt.where(_t.type.in_(bindparam("types", expanding=True)))
    return stmt.order_by(_t.position).limit(bindparam("limit"))


# Built once: SQLAlchemy's compiled cache and psycopg's prepared statements then hit every time.
_FLAGS = (False, True)
_READ_ALL = {
    (s, c, k, u): _read_all_statement(s, c, k, u) for s in _FLAGS for c in _FLAGS for k in _FLAGS for u in _FLAGS
}


_READ_FOLLOWED = (
    select(*_COLUMNS)
    .where(
        _t.position > bindparam("after"),
        or_(
            _t.type.in_(bindparam("openers", expanding=True)),
            and_(
                _t.type.in_(bindparam("types", expanding=True)),
                _t.correlation_id.in_(bindparam("correlation_ids", expanding=True)),
            ),
        ),
    )
    .order_by(_t.position)
    .limit(bindparam("limit"))
)


def _recorded(row: Sequence[Any]) -> RecordedEvent:
    at: datetime = row[7]
    if at.tzinfo is not UTC:
        # SQLite keeps no zone (we always store UTC); PostgreSQL sessions run in UTC.
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return RecordedEvent(row[0], row[1], row[2], row[3], row[4], row[5], row[6], at)


class EventStore:
    """Append-only event log over SQLAlchemy 2 Core, on PostgreSQL or SQLite.

    Thread-safe: share one instance per process. `engine` is for the
    projections' own tables and transactions; on SQLite every transaction on
    it takes the write lock (BEGIN IMMEDIATE), reads included. `read_engine`
    is the same pool for read-only work: on SQLite DEFERRED snapshot reads
    that never wait for a writer; on PostgreSQL autocommit, one round trip
    per statement. `snapshot_engine` is read-only work whose statements share
    one snapshot on both backends.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.read_engine = read_only(engine)
        self.snapshot_engine = snapshot_reads(engine)
        name = engine.dialect.name
        if name not in ("postgresql", "sqlite"):
            raise ValueError(f"unsupported database {name!r}")
        self.dialect: Literal["postgresql", "sqlite"] = cast(Literal["postgresql", "sqlite"], name)
        self._tracker = HeadTracker()
        self._listener: PostgresListener | None = None
        self._listener_guard = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, url: str | URL, *, migrate: bool = True, pool_size: int = 10, max_overflow: int = 20) -> EventStore:
        """Connect to `url`; with `migrate`, first bring the schema to Alembic head."""
        engine = create_store_engine(url, pool_size=pool_size, max_overflow=max_overflow)
        try:
            if migrate:
                migrate_engine(engine)
            else:
                with read_only(engine).connect() as conn:
                    if not inspect(conn).has_table(event_log.name):
                        raise RuntimeError(
                            f"{engine.url.render_as_string()} has no event log: run the migrations "
                            "(EventStore.open(url, migrate=True) or runyard.server.store.migrate(url))"
                        )
            store = cls(engine)
            store._tracker.advance(store.head_position())
        except BaseException:
            engine.dispose()
            raise
        return store

    # -- writing -------------------------------------------------------------

    def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion = ANY
    ) -> AppendResult:
        """Append `events` to one stream, atomically, after checking its version.

        Event ids are checked first: when every id is stored already the call
        is a no-op that answers with their positions (a retry never conflicts);
        when only some are, DuplicateEventError. Then the version: with an int
        `expected_version` the stream must be exactly there (NO_STREAM = absent)
        or ConcurrencyError tells the caller to reload and decide again.
        """
        if self.dialect == "sqlite":
            with self.transaction() as tx:
                return tx.append(stream_id, events, expected_version)
        # On PostgreSQL one statement in autocommit is a transaction of its own: runyard_append
        # locks, checks, inserts and NOTIFYs, and the statement's commit releases the lock. One
        # round trip instead of three (BEGIN, the call, COMMIT), and the log's write lock is no
        # longer held while the answer travels to us and COMMIT travels back.
        with self.read_engine.connect() as conn:
            result = Transaction(conn).append(stream_id, events, expected_version)
        if result.appended:
            self._tracker.advance(result.last_position)
        return result

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A unit of work: appends to several streams (and other writes on
        `tx.connection`) commit together on exit, or not at all on an exception.

        It holds the log's write lock until it ends (PostgreSQL: from its first
        append; SQLite: from the start), so keep it short: other appenders wait.
        """
        with self.engine.begin() as conn:
            tx = Transaction(conn)
            yield tx
        if tx.last_position:
            self._tracker.advance(tx.last_position)

    # -- reading -------------------------------------------------------------

    def read_stream(self, stream_id: str, after_version: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        """One stream's events with version > `after_version`, in version order."""
        params: dict[str, Any] = {"stream_id": stream_id, "after": after_version}
        if limit is not None:
            params["limit"] = limit
        stmt = _READ_STREAM if limit is None else _READ_STREAM_LIMIT
        with self.read_engine.connect() as conn:
            return [_recorded(row) for row in conn.execute(stmt, params).all()]

    def stream_version(self, stream_id: str) -> int:
        """The stream's last version; 0 when it does not exist."""
        with self.read_engine.connect() as conn:
            return int(conn.execute(_STREAM_VERSION, {"stream_id": stream_id}).scalar_one())

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
        """Up to `limit` events with position > `after_position`, in position order, filtered.

        Safe to resume from the last position returned: positions become
        visible in order, so nothing can appear later below it. With `until`,
        only events at positions up to it; since positions are gap-free, a
        filtered read of the window (after, until] with `until` at most the
        head has seen every event of the window, matching or not, so the
        reader may resume from `until` (the projections skip log lines so).
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        if (stream_ids is not None and not stream_ids) or (types is not None and not types):
            return []
        params: dict[str, Any] = {"after": after_position, "limit": limit}
        if stream_ids is not None:
            params["stream_ids"] = list(stream_ids)
        if correlation_id is not None:
            params["correlation_id"] = correlation_id
        if types is not None:
            params["types"] = list(types)
        if until is not None:
            params["until"] = until
        stmt = _READ_ALL[(stream_ids is not None, correlation_id is not None, types is not None, until is not None)]
        with self.read_engine.connect() as conn:
            return [_recorded(row) for row in conn.execute(stmt, params).all()]

    def read_followed(
        self,
        after_position: int,
        limit: int,
        *,
        openers: Sequence[str],
        types: Sequence[str],
        correlation_ids: Sequence[str],
    ) -> list[RecordedEvent]:
        """Every event of the `openers` types, and those of `types` correlated with one of `correlation_ids`.

        For a follower of a changing set of correlations (the experiment
        driver and its live experiments): an opener may add a correlation, so
        the caller stops at it and reads on with the new set.
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        params = {
            "after": after_position,
            "limit": limit,
            "openers": list(openers),
            "types": list(types),
            "correlation_ids": list(correlation_ids),
        }
        with self.read_engine.connect() as conn:
            return [_recorded(row) for row in conn.execute(_READ_FOLLOWED, params).all()]

    def head_position(self) -> int:
        """The position of the last committed event; 0 for an empty log."""
        with self.read_engine.connect() as conn:
            return int(conn.execute(_HEAD).scalar_one())

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
        """Every (matching) event after `after_position`: the stored ones, then live ones as they
        commit, in position order, each once. Blocks between events; ends soon after `stop` is set.

        Woken by commits of this process and, on PostgreSQL, NOTIFY from any
        process; it polls every `poll_interval` seconds as well (other processes
        on SQLite). Every wake-up re-reads from the position reached, so a missed
        one delays an event but never loses it.
        """
        self._ensure_listener()
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
        self._ensure_listener()
        if self._tracker.head > after_position:
            return True
        if self._closed:
            return False
        head = self.head_position()
        self._tracker.advance(head)
        if head > after_position or self._tracker.wait_beyond(after_position, timeout):
            return True
        # No notification reaches us from other SQLite processes: look once more.
        head = self.head_position()
        self._tracker.advance(head)
        return head > after_position

    def on_commit(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call `callback(head_position)` after each commit that grows the log: this process's
        at once, and on PostgreSQL other processes' through LISTEN/NOTIFY (a thread of ours).

        Callbacks must be quick and thread-safe; positions may arrive out of
        order, so read them as "the log reaches at least here". Returns the
        function that unsubscribes.
        """
        self._ensure_listener()
        return self._tracker.add_callback(callback)

    def close(self) -> None:
        """Stop the listener, wake every waiter and close the pool's connections."""
        if self._closed:
            return
        self._closed = True
        with self._listener_guard:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        self._tracker.close()
        self.engine.dispose()

    def _ensure_listener(self) -> None:
        if self.dialect != "postgresql" or self._listener is not None or self._closed:
            return
        with self._listener_guard:
            if self._listener is None and not self._closed:
                self._listener = PostgresListener(self.engine, self._tracker.advance, self.head_position)
                self._listener.start()
