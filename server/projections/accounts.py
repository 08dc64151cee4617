"""The accounts and API keys read models.

Account and key events are rare (an admin's action, not a run's heartbeat),
so each is written with its own statement, in log order; nothing here is
worth a batch cache. Every value is made storable (`storable_row`), and a
second opening event of one account or key leaves the first one's row alone.
Times are the events' `recorded_at`, so a rebuild from position 0 gives
identical rows.

The api_keys table is what the auth interceptor reads on every call (by the
hash of the presented secret), so a revocation becomes visible to every replica
as soon as any replica's runner has projected it.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Table, update

from runyard.server.store import RecordedEvent
from runyard.server.store.dialects import insert_ignoring
from runyard.v1 import events_pb2

from . import schema
from .read_models import Decoded, storable_id, storable_row, type_names


class AccountsProjector:
    """Turns account and API key events into the accounts and api_keys tables."""

    name = "accounts"
    tables: Sequence[Table] = (schema.accounts, schema.api_keys)
    reads = type_names(
        events_pb2.AccountCreated,
        events_pb2.AccountQuotaSet,
        events_pb2.AccountPreemptionSet,
        events_pb2.ApiKeyCreated,
        events_pb2.ApiKeyRevoked,
    )

    def apply(self, conn: Connection, decoded: Decoded) -> None:
        reads = self.reads
        for event, msg in decoded:
            if event.type not in reads:
                continue
            if event.stream_id.startswith("account:"):
                self._account_event(conn, event, msg)
            elif event.stream_id.startswith("api-key:"):
                self._key_event(conn, event, msg)

    def _account_event(self, conn: Connection, event: RecordedEvent, msg: object) -> None:
        t = schema.accounts
        if isinstance(msg, events_pb2.AccountCreated):
            row = {
                "id": msg.account_id,
                "name": msg.name,
                "gpu_quota": msg.gpu_quota,
                "max_queued_runs": msg.max_queued_runs,
                "run_quota": msg.run_quota,
                "created_at": event.recorded_at,
            }
            conn.execute(insert_ignoring(conn, t).values(storable_row(t, row)))
        elif isinstance(msg, events_pb2.AccountQuotaSet):
            quota = {"gpu_quota": msg.gpu_quota, "max_queued_runs": msg.max_queued_runs, "run_quota": msg.run_quota}
            conn.execute(update(t).where(t.c.id == _stream_key(event)).values(storable_row(t, quota)))
        elif isinstance(msg, events_pb2.AccountPreemptionSet):
            conn.execute(update(t).where(t.c.id == _stream_key(event)).values(preemptible=msg.preemptible))

    def _key_event(self, conn: Connection, event: RecordedEvent, msg: object) -> None:
        t = schema.api_keys
        if isinstance(msg, events_pb2.ApiKeyCreated):
            row = {
                "id": msg.key_id,
                "account_id": msg.account_id,
                "role": msg.role,
                "secret_sha256": msg.secret_sha256,
                "name": msg.name,
                "agent_id": msg.agent_id,
                "revoked": False,
                "created_at": event.recorded_at,
            }
            conn.execute(insert_ignoring(conn, t).values(storable_row(t, row)))
        elif isinstance(msg, events_pb2.ApiKeyRevoked):
            conn.execute(update(t).where(t.c.id == _stream_key(event)).values(revoked=True))


def _stream_key(event: RecordedEvent) -> str:
    return storable_id(event.stream_id.split(":", 1)[1])
