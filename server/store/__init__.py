"""The event log: Runyard's only source of truth, on PostgreSQL or SQLite.

Every state change is appended as an event to a stream (one per aggregate:
an experiment, a run, an agent). Each stream is versioned 1, 2, 3 ... for
optimistic concurrency; the whole log is ordered by a global `position`
1, 2, 3 ... that projections and watchers follow.

Gap-free ordered subscription
-----------------------------
A follower reads "events after position P" and remembers the last position
it saw. That is only safe if an event can never become visible *below* a
position a follower has already read. With positions from a sequence or an
autoincrement that breaks: transaction A takes position 10, B takes 11, B
commits first, a follower reads 11 and moves on, A commits 10 behind it, and
10 is never read. (Rolled back transactions would also leave holes.)

So positions are handed out under a lock held until commit: on PostgreSQL a
transaction-scoped advisory lock (`pg_advisory_xact_lock`) taken before the
head is read; on SQLite the database's single write lock, taken by BEGIN
IMMEDIATE. Appending transactions therefore commit one after the other in
position order, every position is max+1 at its time (no holes, a rolled back
transaction leaves nothing to skip), and when position N is visible, so is
everything below it. A follower may resume from any position it has seen.

The cost is that appenders are serialized: the log's write throughput is
bounded by one commit at a time (batches and multi-stream transactions
amortize it). We chose that over an xid8 snapshot watermark (concurrent
appenders, readers held back to the oldest running transaction) because
positions stay gap-free integers in commit order, which cursors, "wait
until the projection reached N" and replay-equals-live all rely on, and
because SQLite serializes writers anyway.

Backends
--------
`EventLog` (protocol.py) is what the rest of the server may use; two
backends meet it: `EventStore` (SQLAlchemy: PostgreSQL, SQLite) and
`InMemoryEventStore` (memory.py, for fast handler tests). What the SQL
dialects do differently for the read models and the scheduler's leader
lives in dialects.py, so that callers outside this package never branch on
the database.

Wake-ups are hints: commits of this process wake its followers at once; on
PostgreSQL the append NOTIFYs every process at commit. Followers always
re-read from their own position, and poll as a fallback.
"""

from __future__ import annotations

from .engine import create_store_engine
from .event_store import EventStore
from .memory import InMemoryEventStore, InMemoryEventTransaction, NestedTransactionError
from .migrate import migrate
from .model import (
    ANY,
    NO_STREAM,
    AnyVersion,
    AppendResult,
    ConcurrencyError,
    DuplicateEventError,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    UnstorableText,
)
from .protocol import EventLog, EventLogTransaction
from .transaction import Transaction

__all__ = [
    "ANY",
    "NO_STREAM",
    "AnyVersion",
    "AppendResult",
    "ConcurrencyError",
    "DuplicateEventError",
    "EventLog",
    "EventLogTransaction",
    "EventStore",
    "ExpectedVersion",
    "InMemoryEventStore",
    "InMemoryEventTransaction",
    "NestedTransactionError",
    "NewEvent",
    "RecordedEvent",
    "Transaction",
    "UnstorableText",
    "create_store_engine",
    "migrate",
]
