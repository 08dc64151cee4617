"""Who a presented API key secret belongs to: the lookup shared by the gRPC API and the ingest.

Every call and every agent report carries a secret; looking its hash up in the
api_keys read model each time would put a query on every RPC. Answers are
cached for `ttl_s` (2 s by default): short enough that a revoked key stops
working within seconds on every replica, long enough that a busy client costs
one query per key every two seconds.

A key row that disappears (only a read-model rebuild empties the table) is not
a revocation: revocation keeps the row and sets `revoked`. So a key that was
valid a moment ago keeps working for `grace_s` while its row is missing,
and a rebuild does not lock every caller out while it replays the log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from runyard.server.domain.account import hash_secret
from runyard.server.queries.accounts import KeyRecord
from runyard.v1 import common_pb2

#: Most cached answers; past it the cache starts over (bounds memory under a flood of bogus keys).
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Principal:
    """The caller of the current RPC or the sender of a report, as its API key says."""

    account_id: str
    role: int  # common_pb2.Role value
    key_id: str
    agent_id: str = ""


def principal_of(record: KeyRecord) -> Principal:
    return Principal(account_id=record.account_id, role=record.role, key_id=record.key_id, agent_id=record.agent_id)


@dataclass
class _Entry:
    record: KeyRecord | None
    checked_at: float
    valid_at: float | None  # last time the row said the key was valid


class Credentials:
    """Secret -> Principal (None for a missing, unknown or revoked key), with a short cache."""

    def __init__(
        self,
        lookup: Callable[[str], KeyRecord | None],
        ttl_s: float = 2.0,
        grace_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl_s
        self._grace = grace_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def cached(self, secret: str) -> tuple[bool, Principal | None]:
        """(True, answer) when a fresh answer is cached; (False, None) when a lookup is due.

        Lets the event loop answer most calls without a hop to a worker thread.
        """
        now = self._clock()
        with self._lock:
            entry = self._entries.get(hash_secret(secret))
        if entry is None or now - entry.checked_at >= self._ttl:
            return False, None
        return True, self._answer(entry, now)

    def principal(self, secret: str) -> Principal | None:
        """Blocking (it may query the database): call from a worker thread."""
        if not secret:
            return None
        digest = hash_secret(secret)
        now = self._clock()
        with self._lock:
            entry = self._entries.get(digest)
        if entry is not None and now - entry.checked_at < self._ttl:
            return self._answer(entry, now)
        record = self._lookup(digest)
        if record is not None and not record.revoked:
            entry = _Entry(record, now, now)
        elif record is None and entry is not None and entry.record is not None:
            entry = _Entry(entry.record, now, entry.valid_at)  # row missing: a rebuild, not a revocation
        else:
            entry = _Entry(record, now, None)
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = entry
        return self._answer(entry, now)

    def _answer(self, entry: _Entry, now: float) -> Principal | None:
        record = entry.record
        if record is None or record.revoked or entry.valid_at is None:
            return None
        if entry.valid_at < entry.checked_at and now - entry.valid_at > self._grace:
            return None
        return principal_of(record)


def is_admin(principal: Principal) -> bool:
    return principal.role == common_pb2.ROLE_ADMIN


def may_report_as(principal: Principal | None, agent_id: str) -> bool:
    """Only an agent key bound to exactly this agent id speaks for it.

    A key without an agent id speaks for no agent: such a key would let one
    host register, heartbeat and report as every other host. The account an
    agent key belongs to is checked where keys are made: an agent id is bound
    to one account's keys (`Commands.create_api_key`), so a key bound to the id
    is always of the account that runs that agent.
    """
    return (
        principal is not None
        and principal.role == common_pb2.ROLE_AGENT
        and principal.agent_id != ""
        and principal.agent_id == agent_id
    )
