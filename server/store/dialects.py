"""What PostgreSQL and SQLite do differently, for the code that writes beside the event log.

The read models and the scheduler's leader lease share the log's database;
where the two dialects need different SQL (an INSERT that skips stored keys,
COPY, TRUNCATE, row locks, an advisory lock held by a session, a commit that
need not wait for the disk), the choice is made here, once, so that callers
outside the store never ask which database they are on. Each function runs
exactly the SQL its caller ran before it moved here.

SQLite is the embedded, single-process default: one writer at a time
(BEGIN IMMEDIATE) and one process, so row and session locks have nothing to
keep out there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Insert, Select, Table, delete, insert, text
from sqlalchemy.dialects import postgresql, sqlite


def _postgresql(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "postgresql"


def insert_ignoring(conn: Connection, table: Table) -> Insert:
    """An INSERT that leaves alone a row whose key (or other unique value) is stored already: the first opening wins."""
    if _postgresql(conn):
        return postgresql.insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return insert(table)


def bulk_insert(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], *, skip_stored: bool) -> None:
    """Insert many new rows (storable already), in the caller's transaction.

    On PostgreSQL the rows stream in through COPY, several times faster than
    one INSERT per row, unless `skip_stored`: a COPY cannot skip a row whose
    key is stored already, so it fails the batch, which the caller applies
    again with `skip_stored`. Elsewhere executemany of `insert_ignoring`,
    which always skips them.
    """
    if not rows:
        return
    if not _postgresql(conn) or skip_stored:
        conn.execute(insert_ignoring(conn, table), list(rows))
        return
    columns = list(rows[0])
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    names = ", ".join(f'"{c}"' for c in columns)
    with cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


def load_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    *,
    rows: Callable[[], list[dict[str, Any]]],
    copy_text: Callable[[], str],
) -> None:
    """Insert rows the caller can give in two shapes, whichever this database takes fastest.

    PostgreSQL takes `copy_text()`: the rows already formatted in COPY's
    text format (tab between `columns`, newline after each row, `\\`, tab,
    newline and carriage return escaped), for a caller that formats faster
    than psycopg's per-row ``write_row``. Elsewhere an executemany of `rows()`.
    Only the shape that is used is built.
    """
    if not _postgresql(conn):
        conn.execute(insert(table), rows())
        return
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    names_sql = ", ".join(f'"{c}"' for c in columns)
    with cursor.copy(f'COPY "{table.name}" ({names_sql}) FROM STDIN') as copy:
        copy.write(copy_text())


def empty_tables(conn: Connection, tables: Iterable[Table]) -> None:
    """Delete every row of `tables`, in the caller's transaction.

    On PostgreSQL with TRUNCATE: after a DELETE the dead rows stay in the
    indexes until a vacuum, and every row inserted again pays to step over
    its dead twin (about three times slower). TRUNCATE is transactional
    there; it locks the tables until the caller commits.
    """
    if _postgresql(conn):
        names = ", ".join(f'"{table.name}"' for table in tables)
        conn.execute(text(f"TRUNCATE {names}"))
        return
    for table in tables:
        conn.execute(delete(table))


def commit_asynchronously(conn: Connection) -> None:
    """Let the caller's transaction commit without waiting for its WAL to reach the disk (PostgreSQL).

    For derived data only: a crash may lose the transaction, which must then
    be redone from what is durable. SQLite has no per-transaction switch: no-op.
    """
    if _postgresql(conn):
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


_Query = TypeVar("_Query", bound=Select[Any])


def locking_rows(conn: Connection, query: _Query) -> _Query:
    """`query`, made to lock the rows it reads until the transaction ends (PostgreSQL's FOR UPDATE).

    SQLite's writing transactions (BEGIN IMMEDIATE) hold the database's one
    write lock from their start, which keeps every other writer out already.
    """
    if _postgresql(conn):
        return query.with_for_update()
    return query


class SessionLock:
    """A lock that one process among the replicas holds for as long as its own session lives.

    On PostgreSQL a session-level advisory lock on a connection kept open:
    if the holder's process dies its connection closes, the lock is
    released, and another replica's next `try_acquire` takes it over. On
    SQLite (one process) it is always held. `on_acquired` and `on_lost` are
    called (PostgreSQL only) when this process takes the lock and when it
    finds its session gone.
    """

    def __init__(
        self,
        engine: Engine,
        key: int,
        *,
        on_acquired: Callable[[], None] = lambda: None,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self._key = key
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        """True while this process holds the lock; safe to call repeatedly."""
        if not _postgresql(self._engine):
            return True
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute(text("SELECT 1"))
                    return True
                except Exception:
                    self._on_lost()
                    self._release_locked()
            conn = self._engine.connect()
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}).scalar()
            conn.commit()
            if got:
                self._conn = conn
                self._on_acquired()
                return True
            conn.close()
            return False

    def release(self) -> None:
        with self._lock:
            self._release_locked()

    def _release_locked(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            self._conn.commit()
        except Exception:
            pass
        finally:
            self._conn.close()
            self._conn = None
