"""SQLAlchemy engines for the event log's two databases, safe with many threads.

SQLite (the embedded default) allows one writer at a time. Left to itself,
pysqlite opens transactions lazily (DEFERRED): a transaction that read first
and writes later can then fail at once with "database is locked" when another
writer committed in between, whatever the busy timeout. So every transaction
on `engine` starts with BEGIN IMMEDIATE, which takes the write lock up front
(waiting up to the busy timeout), and pysqlite's own transaction handling is
switched off (isolation_level=None) so that SQLAlchemy's "begin" hook decides.
Waiting for SQLite's lock means sleeping in its busy handler (1, 2, 5, ...
100 ms steps), which starves threads under contention, so writers of one
process first queue on a plain mutex per database file, held from BEGIN
IMMEDIATE to COMMIT/ROLLBACK: hand-over is immediate and no thread of this
process ever sleeps in the busy handler. Other processes still meet SQLite's
own lock and its busy timeout. The journal is WAL, so readers never wait for
the writer and the writer never waits for readers; `synchronous=FULL` makes a
commit durable once append() returns, like PostgreSQL's default.

Reads go through `read_only(engine)`: on SQLite a DEFERRED transaction (a
snapshot, no writer lock); on PostgreSQL autocommit, which saves the BEGIN and
ROLLBACK round trips around a single SELECT.

PostgreSQL sessions run in UTC so that timestamps come back as UTC.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

BUSY_TIMEOUT_S = 15.0
"""How long a SQLite writer waits for the write lock before "database is locked"."""

READ_ONLY_OPTION = "runyard_read_only"
"""Execution option: on SQLite, begin DEFERRED and skip the writer mutex."""


def create_store_engine(url: str | URL, *, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    """An engine for `postgresql+psycopg://...` or `sqlite:///path` with the hooks above."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, pool_size=pool_size, max_overflow=max_overflow)
    if backend == "postgresql":
        return _postgresql_engine(parsed, pool_size=pool_size, max_overflow=max_overflow)
    raise ValueError(f"unsupported database URL {parsed.render_as_string()!r}: use postgresql+psycopg:// or sqlite:///")


def read_only(engine: Engine) -> Engine:
    """The same pool, set up for read-only work (see the module docstring)."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine.execution_options(**{READ_ONLY_OPTION: True})


def snapshot_reads(engine: Engine) -> Engine:
    """The same pool for read-only work whose statements must see one snapshot.

    Several tables read as one picture (the queue beside the runs holding GPUs): on PostgreSQL
    a read-only REPEATABLE READ transaction, since autocommit gives each statement its own
    snapshot and a run just assigned could show as both queued and holding; on SQLite a
    DEFERRED transaction already reads one snapshot.
    """
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return engine.execution_options(**{READ_ONLY_OPTION: True})


# -- SQLite -------------------------------------------------------------------


class _WriterMutex:
    """One per database file and process: the queue SQLite writers of this process wait in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    def acquire(self, timeout: float) -> None:
        me = threading.get_ident()
        if self._owner == me:
            # Waiting would deadlock: this thread itself holds the write lock on another connection.
            raise sqlite3.OperationalError(
                "database is locked: this thread already has a write transaction open on another connection"
            )
        if not self._lock.acquire(timeout=timeout):
            raise sqlite3.OperationalError(f"database is locked: no write lock within {timeout}s")
        self._owner = me

    def release(self) -> None:
        self._owner = None
        self._lock.release()


_MUTEXES: dict[str, _WriterMutex] = {}
_MUTEXES_GUARD = threading.Lock()


def _mutex_for(path: str) -> _WriterMutex:
    key = str(Path(path).resolve())
    with _MUTEXES_GUARD:
        return _MUTEXES.setdefault(key, _WriterMutex())


class _SQLiteConnection(sqlite3.Connection):
    """A pysqlite connection that gives the writer mutex back when its transaction ends."""

    mutex: _WriterMutex | None = None
    holding = False

    def hold_writer_mutex(self) -> None:
        if self.mutex is not None and not self.holding:
            self.mutex.acquire(BUSY_TIMEOUT_S)
            self.holding = True

    def release_writer_mutex(self) -> None:
        if self.holding and self.mutex is not None:
            self.holding = False
            self.mutex.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.release_writer_mutex()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release_writer_mutex()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_writer_mutex()


def _sqlite_engine(url: URL, *, pool_size: int, max_overflow: int) -> Engine:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:") or url.query.get("mode") == "memory":
        raise ValueError("the event log needs a SQLite file (sqlite:///path/runyard.db), not an in-memory database")
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    mutex = _mutex_for(database)
    engine = sa.create_engine(
        url,
        poolclass=sa.QueuePool,
        pool_size=pool_size,
        max_overflow=max_overflow,
        connect_args={
            "check_same_thread": False,
            "timeout": BUSY_TIMEOUT_S,
            "isolation_level": None,
            "factory": _SQLiteConnection,
        },
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.mutex = mutex
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=FULL")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(READ_ONLY_OPTION):
            conn.exec_driver_sql("BEGIN")
            return
        dbapi_connection = conn.connection.dbapi_connection
        assert isinstance(dbapi_connection, _SQLiteConnection)
        try:
            dbapi_connection.hold_writer_mutex()
        except sqlite3.OperationalError as exc:
            # The same error type SQLite's own busy timeout produces, as SQLAlchemy wraps it.
            raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            dbapi_connection.release_writer_mutex()
            raise

    return engine


# -- PostgreSQL -----------------------------------------------------------------


def _postgresql_engine(url: URL, *, pool_size: int, max_overflow: int) -> Engine:
    if url.get_driver_name() != "psycopg":
        raise ValueError("PostgreSQL URLs must name the psycopg 3 driver: postgresql+psycopg://...")
    engine = sa.create_engine(url, pool_size=pool_size, max_overflow=max_overflow)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # SET is transactional: run it outside any transaction so that a later rollback keeps it.
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        try:
            dbapi_connection.execute("SET TIME ZONE 'UTC'")
        finally:
            dbapi_connection.autocommit = autocommit

    return engine
