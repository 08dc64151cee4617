"""Keeps the read models up to date with the log.

Each batch of events and the checkpoint that records it commit in one
transaction, so a crash can never apply an event twice or skip one. The
checkpoint row is locked for the batch (FOR UPDATE on PostgreSQL; SQLite
serialises writers anyway), so several server replicas can run a runner on one
database without applying a batch twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from sqlalchemy import Connection, insert, select, update

from runyard.server.store import EventStore

from . import schema
from .read_models import ReadModelProjector
from .registry import all_projectors

log = structlog.get_logger(__name__)

CHECKPOINT = "read_models"


class ProjectionRunner:
    def __init__(self, store: EventStore, batch_size: int = 2000) -> None:
        self._store = store
        self._projector = ReadModelProjector(all_projectors())
        self._batch_size = batch_size
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._position = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._wake = threading.Event()

    @property
    def position(self) -> int:
        return self._position

    # -- background follower -------------------------------------------------

    def start(self) -> None:
        self._unsubscribe = self._store.on_commit(lambda _pos: self._wake.set())
        self._thread = threading.Thread(target=self._follow, name="projections", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._unsubscribe:
            self._unsubscribe()
        if self._thread:
            self._thread.join(timeout=10)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self.catch_up()
            except Exception:
                log.exception("projection batch failed; retrying")
                self._stop.wait(1.0)
                continue
            self._wake.wait(timeout=1.0)
            self._wake.clear()

    # -- catching up ---------------------------------------------------------

    def catch_up(self) -> int:
        """Apply every pending event; returns how many were applied."""
        total = 0
        with self._lock:
            while True:
                applied = self._apply_batch()
                total += applied
                if applied < self._batch_size:
                    return total

    def reach(self, position: int) -> None:
        """Bring the read models to at least `position`, doing no more than that takes.

        Returns at once when they are there; when the follower is applying a
        batch, waits for it and looks again before applying anything itself,
        so a caller woken by the same commit as the follower does not run a
        second (empty) batch after it.
        """
        if self._position >= position:
            return
        with self._lock:
            while self._position < position:
                if self._apply_batch() < self._batch_size:
                    return

    def _apply_batch(self) -> int:
        with self._store.engine.begin() as conn:
            position = _lock_checkpoint(conn)
            events = self._store.read_all(position, limit=self._batch_size)
            if events:
                self._projector.apply(conn, events)
                position = events[-1].position
                conn.execute(
                    update(schema.checkpoints).where(schema.checkpoints.c.name == CHECKPOINT).values(position=position)
                )
        self._advance(position)
        return len(events)

    def _advance(self, position: int) -> None:
        with self._cond:
            if position > self._position:
                self._position = position
                self._cond.notify_all()

    def wait_for(self, position: int, timeout: float = 10.0) -> bool:
        """Block until the read models include the event at `position`."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._cond:
            while self._position < position:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
                if self._position < position:
                    self._wake.set()
        return True

    def rebuild(self) -> tuple[int, float]:
        """Replay the log from position 0 into emptied read models."""
        started = time.perf_counter()
        with self._lock:
            with self._store.engine.begin() as conn:
                _lock_checkpoint(conn)
                self._projector.reset(conn)
                conn.execute(
                    update(schema.checkpoints).where(schema.checkpoints.c.name == CHECKPOINT).values(position=0)
                )
            with self._cond:
                self._position = 0
            total = 0
            while True:
                applied = self._apply_batch()
                total += applied
                if applied < self._batch_size:
                    break
        return total, time.perf_counter() - started


def _lock_checkpoint(conn: Connection) -> int:
    table = schema.checkpoints
    query = select(table.c.position).where(table.c.name == CHECKPOINT)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    position = conn.execute(query).scalar_one_or_none()
    if position is None:
        conn.execute(insert(table).values(name=CHECKPOINT, position=0))
        return 0
    return int(position)
