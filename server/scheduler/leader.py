"""One active scheduler among control-plane replicas.

On PostgreSQL the leader holds a session-level advisory lock on a connection
of its own; if its process dies the connection closes, the lock is released,
and another replica's next try takes it over. SQLite is the embedded,
single-process default, so its only replica always leads.
"""

from __future__ import annotations

import threading

import structlog
from sqlalchemy import Connection, Engine, text

log = structlog.get_logger(__name__)

# An arbitrary, fixed key: every replica competes for the same lock.
SCHEDULER_LOCK_KEY = 7_216_315_001


class LeaderLease:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        """True while this replica leads; safe to call repeatedly."""
        if self._engine.dialect.name != "postgresql":
            return True
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute(text("SELECT 1"))
                    return True
                except Exception:
                    log.warning("leader connection lost; stepping down")
                    self._release_locked()
            conn = self._engine.connect()
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": SCHEDULER_LOCK_KEY}).scalar()
            conn.commit()
            if got:
                self._conn = conn
                log.info("became scheduler leader")
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
            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEDULER_LOCK_KEY})
            self._conn.commit()
        except Exception:
            pass
        finally:
            self._conn.close()
            self._conn = None
