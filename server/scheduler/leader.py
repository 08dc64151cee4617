"""One active scheduler among control-plane replicas.

The leader holds the store's `SessionLock`: on PostgreSQL a session-level
advisory lock on a connection of its own; if its process dies the connection
closes, the lock is released, and another replica's next try takes it over.
SQLite is the embedded, single-process default, so its only replica always leads.
"""

from __future__ import annotations

import structlog
from sqlalchemy import Engine

from runyard.server.store.dialects import SessionLock

log = structlog.get_logger(__name__)

# An arbitrary, fixed key: every replica competes for the same lock.
SCHEDULER_LOCK_KEY = 7_216_315_001


class LeaderLease:
    def __init__(self, engine: Engine) -> None:
        self._lock = SessionLock(
            engine,
            SCHEDULER_LOCK_KEY,
            on_acquired=lambda: log.info("became scheduler leader"),
            on_lost=lambda: log.warning("leader connection lost; stepping down"),
        )

    def try_acquire(self) -> bool:
        """True while this replica leads; safe to call repeatedly."""
        return self._lock.try_acquire()

    def release(self) -> None:
        self._lock.release()
