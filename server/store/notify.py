"""Telling waiting readers that the log grew.

Wake-ups are only hints: a subscriber always re-reads from its own position,
so a late, doubled or lost wake-up costs latency, never an event. The head
this process knows of advances from three sources: its own commits (at
once, in the committing thread), PostgreSQL NOTIFY from any process (a
listener thread), and reads of the head from the database.

A subscriber that acts on this process's own commits some other way (the
scheduler: the application's bus wakes it by the type of each event it
committed) can ask, inside its callback, where the commit came from:
`commit_is_heard()` is true when the listener heard of it from the database
(another process's commit, or the head read after a reconnect), and
`commit_is_echo()` is true when what it heard is the NOTIFY of one of this
process's own sessions. Both are hints like the rest.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import Engine, event

from .schema import NOTIFY_CHANNEL

log = structlog.get_logger(__name__)

CommitCallback = Callable[[int], None]

LISTENER_APPLICATION_NAME = "runyard-event-log-listener"
"""How the listener's session shows in pg_stat_activity."""

_this_thread = threading.local()


def commit_is_heard() -> bool:
    """Inside an on_commit callback: did the listener hear of this head from the database (not our own commit)?"""
    return getattr(_this_thread, "heard", False)


def commit_is_echo() -> bool:
    """Inside an on_commit callback: is this the NOTIFY of one of this process's own sessions?"""
    return getattr(_this_thread, "echo", False)


class HeadTracker:
    """The highest log position this process knows to be committed, and who waits for it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._head = 0
        self._closed = False
        self._callbacks: dict[int, CommitCallback] = {}
        self._next_token = 0

    @property
    def head(self) -> int:
        return self._head

    def advance(self, position: int) -> None:
        """Record a committed head; wakes waiters and calls back when it is new.

        Callbacks run in the calling thread, outside the lock; from several
        threads they may see positions out of order, so treat them as "at
        least this far".
        """
        with self._cond:
            if position <= self._head:
                return
            self._head = position
            self._cond.notify_all()
            callbacks = list(self._callbacks.values())
        for callback in callbacks:
            try:
                callback(position)
            except Exception:
                log.exception("on_commit callback failed", position=position)

    def add_callback(self, callback: CommitCallback) -> Callable[[], None]:
        with self._cond:
            token = self._next_token
            self._next_token += 1
            self._callbacks[token] = callback

        def unsubscribe() -> None:
            with self._cond:
                self._callbacks.pop(token, None)

        return unsubscribe

    def wait_beyond(self, position: int, timeout: float, stop: threading.Event | None = None) -> bool:
        """Block until the known head passes `position`, the timeout ends, `stop` is set or we close."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._head <= position:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed or (stop is not None and stop.is_set()):
                    return False
                # A stop event cannot notify our condition: look at it a few times a second.
                self._cond.wait(left if stop is None else min(left, 0.05))
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class PostgresListener:
    """LISTENs for runyard_append's NOTIFY on a connection of its own.

    After every (re)connect it reads the head, so notifications missed while
    disconnected cost nothing but that read.
    """

    def __init__(self, engine: Engine, on_position: CommitCallback, read_head: Callable[[], int]) -> None:
        self._engine = engine
        self._on_position = on_position
        self._read_head = read_head
        self._stop = threading.Event()
        self._stop_channel = f"runyard_stop_{uuid.uuid4().hex}"
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="runyard-event-log-listener", daemon=True)
        # Backend pids of this engine's pooled sessions, to tell our own NOTIFYs from others'.
        self._own_pids: dict[int, int] = {}
        self._pids_guard = threading.Lock()
        self._events = [("checkout", self._pooled), ("close", self._closed), ("close_detached", self._detached)]
        for name, fn in self._events:
            event.listen(engine, name, fn)

    def _pooled(self, dbapi_connection: Any, _record: Any = None, _proxy: Any = None) -> None:
        pid = _backend_pid(dbapi_connection)
        if pid:
            with self._pids_guard:
                self._own_pids[id(dbapi_connection)] = pid

    def _closed(self, dbapi_connection: Any, _record: Any = None) -> None:
        with self._pids_guard:
            self._own_pids.pop(id(dbapi_connection), None)

    def _detached(self, dbapi_connection: Any) -> None:
        self._closed(dbapi_connection)

    def _own(self, pid: int) -> bool:
        with self._pids_guard:
            return pid in self._own_pids.values()

    def start(self, timeout: float = 10.0) -> None:
        """Start listening; returns once LISTEN is in place (or after `timeout`)."""
        self._thread.start()
        self._listening.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        try:
            with self._engine.connect() as conn:
                conn.exec_driver_sql(f"NOTIFY {self._stop_channel}")
                conn.commit()
        except Exception:
            log.debug("could not wake the listener; it notices within its poll interval")
        self._thread.join(timeout=10)
        for name, fn in self._events:
            with contextlib.suppress(Exception):
                event.remove(self._engine, name, fn)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 0.1
            except Exception:
                log.warning("event log listener lost its connection; reconnecting", exc_info=True)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _listen(self) -> None:
        raw = self._engine.raw_connection()
        conn = raw.driver_connection
        raw.detach()  # a private session: never handed back to the pool
        try:
            assert conn is not None
            conn.autocommit = True
            conn.execute(f"SET application_name = '{LISTENER_APPLICATION_NAME}'")
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            conn.execute(f"LISTEN {self._stop_channel}")
            self._listening.set()
            _this_thread.heard = True  # every head this thread passes on was heard, not committed here
            self._on_position(self._read_head())
            while not self._stop.is_set():
                for note in conn.notifies(timeout=5.0):
                    if note.channel == self._stop_channel or self._stop.is_set():
                        return
                    if note.payload:
                        _this_thread.echo = self._own(note.pid)
                        try:
                            self._on_position(int(note.payload))
                        finally:
                            _this_thread.echo = False
        finally:
            raw.close()


def _backend_pid(dbapi_connection: Any) -> int:
    """The server process of a psycopg session (0 when it cannot be told)."""
    try:
        return int(dbapi_connection.info.backend_pid)
    except Exception:
        return 0
