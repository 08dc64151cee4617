"""Keeps the read models up to date with the log.

Each batch of events and the checkpoint that records it commit in one
transaction, so a crash can never apply an event twice or skip one. The
checkpoint row is locked for the batch (FOR UPDATE on PostgreSQL; SQLite
serialises writers anyway), so several server replicas can run a runner on one
database without applying a batch twice.

One event a read model cannot project must not stop the others (nor the
write side, whose answers wait for the read models). A batch that fails is
applied again read model by read model (`ReadModelProjector.apply_carefully`):
the failing read model skips only the failing event, and the runner records
it (a row `failed:<read model>` in the checkpoints table with the first
skipped position, a structured log line, `failures()` for GetServerInfo and
health). `rebuild` clears the record and replays everything again.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import structlog
from sqlalchemy import Connection, delete, insert, select, update

from runyard.server.store import EventStore, RecordedEvent, dialects

from . import schema
from .read_models import ReadModelProjector, Skipped
from .registry import all_projectors

log = structlog.get_logger(__name__)

CHECKPOINT = "read_models"
#: Checkpoint rows `failed:<read model>` hold the position of the first event that read model skipped.
FAILED_PREFIX = "failed:"
#: Positions a rebuild applies per transaction. Larger than a live batch: fewer round trips, and nobody waits on it.
REBUILD_WINDOW = 10_000


class ProjectionRunner:
    def __init__(self, store: EventStore, batch_size: int = 2000) -> None:
        self._store = store
        self._projector = ReadModelProjector(all_projectors())
        self._types = sorted(self._projector.reads)
        self._batch_size = batch_size
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._position = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._wake = threading.Event()
        # What this process saw skipped, by read model: the first skip's record (its error) and the count.
        self._skipped: dict[str, tuple[Skipped, int]] = {}
        #: Called (on the runner's thread) after a read model skipped an event, and after a rebuild.
        self.on_failures_changed: Callable[[], None] = lambda: None

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
        """Apply every pending event; returns how many positions of the log that covered."""
        total = 0
        with self._lock:
            while True:
                covered = self._apply_batch()
                total += covered
                if covered < self._batch_size:
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

    def _read_window(self, after: int, size: int, head: int | None = None) -> _Page:
        """The events the read models read in the next window of the log: (after, after + size].

        Positions are gap-free and become visible in order, so a window that
        ends at or below the head is complete, and only the types some read
        model reads need to leave the database (not the log lines, which are
        most of a busy log). The checkpoint then moves to the window's end.
        """
        upto = min(after + size, self._store.head_position() if head is None else head)
        if upto <= after:
            return _Page(after, after, [])
        events = self._store.read_all(after, limit=size, types=self._types, until=upto)
        return _Page(after, upto, events)

    def _apply_batch(self, page: _Page | None = None, *, bulk: bool = False) -> int:
        """Apply the next window of the log in one transaction with the checkpoint; returns the positions covered.

        `page` is a window read ahead of time; it is used only when it starts
        at the checkpoint (another replica's runner may have moved it meanwhile).
        Without one, the head is read first, and when nothing is new no
        transaction is opened: a follower woken twice by one commit, or the
        scheduler asking right after it, costs one round trip, not five.
        `bulk` (a rebuild) commits without waiting for the disk. A window
        that fails is applied again carefully (see the module docstring); if
        that fails too (the database is down), the error is raised.
        """
        head = None
        if page is None:
            head = self._store.head_position()
            if head <= self._position:
                return 0
        try:
            return self._apply_window(page, head, bulk=bulk, careful=False)
        except Exception as exc:
            log.warning("projection batch failed; applying it read model by read model", error=str(exc)[:500])
        return self._apply_window(page, head, bulk=bulk, careful=True)

    def _apply_window(self, page: _Page | None, head: int | None, *, bulk: bool, careful: bool) -> int:
        skipped: list[Skipped] = []
        with self._store.engine.begin() as conn:
            if bulk:
                _commit_asynchronously(conn)
            position = _lock_checkpoint(conn)
            if page is None or page.after != position:
                page = self._read_window(position, self._batch_size, head)
            if page.upto > position:
                if page.events:
                    if careful:
                        skipped = self._projector.apply_carefully(conn, page.events)
                        _record_failures(conn, skipped)
                    else:
                        self._projector.apply(conn, page.events)
                conn.execute(
                    update(schema.checkpoints).where(schema.checkpoints.c.name == CHECKPOINT).values(position=page.upto)
                )
        for item in skipped:
            first, count = self._skipped.get(item.read_model, (item, 0))
            self._skipped[item.read_model] = (first, count + 1)
            log.error(
                "read model skipped an event it cannot project",
                read_model=item.read_model,
                position=item.position,
                event_type=item.event_type,
                error=item.error,
            )
        if skipped:
            self.on_failures_changed()
        self._advance(max(position, page.upto))
        return max(0, page.upto - position)

    def failures(self) -> list[ReadModelFailure]:
        """The read models that skipped events, by anyone's runner on this database (empty when all are healthy)."""
        table = schema.checkpoints
        with self._store.read_engine.connect() as conn:
            rows = conn.execute(
                select(table.c.name, table.c.position).where(table.c.name.startswith(FAILED_PREFIX))
            ).all()
        found = []
        for name, position in sorted(rows):
            read_model = name.removeprefix(FAILED_PREFIX)
            seen = self._skipped.get(read_model)
            if seen is not None and seen[0].position == position:
                first, count = seen
                found.append(ReadModelFailure(read_model, position, first.event_type, first.error, count))
            else:  # skipped by another replica, or before this process started: the log line has the error
                event_type = self._event_type(int(position))
                error = "skipped by another replica or before this server started: see the server log"
                found.append(ReadModelFailure(read_model, int(position), event_type, error, 0))
        return found

    def _event_type(self, position: int) -> str:
        events = self._store.read_all(position - 1, limit=1) if position > 0 else []
        return events[0].type if events and events[0].position == position else ""

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
                conn.execute(delete(schema.checkpoints).where(schema.checkpoints.c.name.startswith(FAILED_PREFIX)))
                self._skipped.clear()
                conn.execute(
                    update(schema.checkpoints).where(schema.checkpoints.c.name == CHECKPOINT).values(position=0)
                )
            with self._cond:
                self._position = 0
            total = 0
            window = max(self._batch_size, REBUILD_WINDOW)
            with _ReadAhead(lambda after: self._read_window(after, window), window) as pages:
                for page in pages:
                    covered = self._apply_batch(page, bulk=True)
                    total += covered
                    if covered < window:
                        break
            # What the windows read ahead missed: appends meanwhile, or another replica's runner moving the checkpoint.
            while (covered := self._apply_batch(bulk=True)) > 0:
                total += covered
        self.on_failures_changed()
        return total, time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class ReadModelFailure:
    """A read model that skipped events: the first one's position, type and error, and how many this process saw."""

    read_model: str
    position: int
    event_type: str
    error: str
    skipped: int


def _record_failures(conn: Connection, skipped: list[Skipped]) -> None:
    """Keep each read model's first skipped position in the checkpoints table, for a restart or another replica."""
    table = schema.checkpoints
    for item in skipped:
        name = f"{FAILED_PREFIX}{item.read_model}"
        if conn.execute(select(table.c.position).where(table.c.name == name)).first() is None:
            conn.execute(insert(table).values(name=name, position=item.position))


@dataclass(frozen=True, slots=True)
class _Page:
    """The events of the window (after, upto] of the log that the read models read."""

    after: int
    upto: int
    events: list[RecordedEvent]


class _ReadAhead:
    """Reads the log's next windows on a thread while the current one is applied.

    A rebuild alternates between waiting on the database and projecting in
    Python; reading ahead fills the waits. At most `depth` windows wait.
    """

    def __init__(self, read_window: Callable[[int], _Page], batch_size: int, depth: int = 2) -> None:
        self._read_window = read_window
        self._batch_size = batch_size
        self._pages: queue.Queue[_Page | BaseException | None] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="rebuild-read-ahead", daemon=True)

    def __enter__(self) -> Iterator[_Page]:
        self._thread.start()
        return self._iterate()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._pages.get(timeout=0.1)  # unblock a reader waiting for room
        self._thread.join()

    def _iterate(self) -> Iterator[_Page]:
        while True:
            item = self._pages.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _read(self) -> None:
        after = 0
        try:
            while not self._stop.is_set():
                page = self._read_window(after)
                self._put(page)
                if page.upto - after < self._batch_size:
                    break
                after = page.upto
            self._put(None)
        except BaseException as exc:  # handed to the applying thread, which raises it
            self._put(exc)

    def _put(self, item: _Page | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._pages.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


def _commit_asynchronously(conn: Connection) -> None:
    """Read models are derived data: a rebuild's batches need not wait for the disk.

    On PostgreSQL the batch commits without waiting for its WAL to be
    flushed. A crash can lose the last batches, but each with its checkpoint,
    so they are applied again from the log, which stays fully durable. (Live
    batches are small: there the extra round trip would cost more than the flush.)
    """
    dialects.commit_asynchronously(conn)


def _lock_checkpoint(conn: Connection) -> int:
    table = schema.checkpoints
    query = select(table.c.position).where(table.c.name == CHECKPOINT)
    query = dialects.locking_rows(conn, query)
    position = conn.execute(query).scalar_one_or_none()
    if position is None:
        conn.execute(insert(table).values(name=CHECKPOINT, position=0))
        return 0
    return int(position)
