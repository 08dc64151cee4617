"""Reads of the accounts and api_keys read models, and the key lookup that auth relies on.

Kept beside `resources.py` rather than in it so that the auth path (a lookup
by secret hash on every call) has one small, obvious home.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, and_, func, select

from runyard.server.domain.run_states import HOLDING_SLOTS
from runyard.server.projections import schema
from runyard.server.projections.read_models import utc
from runyard.v1 import common_pb2, resources_pb2


@dataclass(frozen=True)
class KeyRecord:
    """What the auth path needs to know about a presented key."""

    key_id: str
    account_id: str
    role: int
    agent_id: str
    revoked: bool


def _ts(target: object, value: datetime | None) -> None:
    if value is not None:
        target.FromDatetime(utc(value))  # type: ignore[attr-defined]


def _key(row: dict[str, object]) -> resources_pb2.ApiKey:
    key = resources_pb2.ApiKey(
        id=str(row["id"]),
        account_id=str(row["account_id"]),
        role=int(row["role"]),  # type: ignore[call-overload]
        name=str(row["name"]),
        agent_id=str(row["agent_id"]),
        revoked=bool(row["revoked"]),
    )
    _ts(key.created_at, row["created_at"])  # type: ignore[arg-type]
    return key


class AccountQueries:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- accounts --------------------------------------------------------------

    def count_accounts(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(schema.accounts)).scalar_one())

    def get_account(self, account_id: str) -> resources_pb2.Account | None:
        found = self._accounts(account_id, "", 1)
        return found[0] if found else None

    def list_accounts(self, after_id: str = "", limit: int = 100) -> list[resources_pb2.Account]:
        """In id order; `after_id` is the last id of the previous page."""
        return self._accounts("", after_id, limit)

    def _accounts(self, account_id: str, after_id: str, limit: int) -> list[resources_pb2.Account]:
        a, r = schema.accounts, schema.runs
        query = select(a).order_by(a.c.id).limit(limit)
        if account_id:
            query = query.where(a.c.id == account_id)
        if after_id:
            query = query.where(a.c.id > after_id)
        with self._engine.connect() as conn:
            rows = [dict(x) for x in conn.execute(query).mappings()]
            ids = [row["id"] for row in rows]
            in_use: dict[str, int] = {}
            queued: dict[str, int] = {}
            if ids:
                for acct, gpus in conn.execute(
                    select(r.c.account_id, func.sum(r.c.gpus))
                    .where(and_(r.c.account_id.in_(ids), r.c.state.in_(sorted(HOLDING_SLOTS))))
                    .group_by(r.c.account_id)
                ):
                    in_use[acct] = int(gpus or 0)
                for acct, n in conn.execute(
                    select(r.c.account_id, func.count())
                    .where(
                        and_(
                            r.c.account_id.in_(ids),
                            r.c.state == common_pb2.RUN_STATE_QUEUED,
                            r.c.cancel_requested.is_(False),
                        )
                    )
                    .group_by(r.c.account_id)
                ):
                    queued[acct] = int(n)
        out = []
        for row in rows:
            account = resources_pb2.Account(
                id=row["id"],
                name=row["name"],
                gpu_quota=row["gpu_quota"],
                max_queued_runs=row["max_queued_runs"],
                run_quota=row["run_quota"],
                gpus_in_use=in_use.get(row["id"], 0),
                runs_queued=queued.get(row["id"], 0),
            )
            _ts(account.created_at, row["created_at"])
            out.append(account)
        return out

    # -- API keys --------------------------------------------------------------

    def get_api_key(self, key_id: str) -> resources_pb2.ApiKey | None:
        t = schema.api_keys
        with self._engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.id == key_id)).mappings().first()
        return _key(dict(row)) if row else None

    def list_api_keys(self, account_id: str = "") -> list[resources_pb2.ApiKey]:
        """Every key (or one account's), oldest first; never a secret or its hash."""
        t = schema.api_keys
        query = select(t).order_by(t.c.created_at, t.c.id)
        if account_id:
            query = query.where(t.c.account_id == account_id)
        with self._engine.connect() as conn:
            return [_key(dict(r)) for r in conn.execute(query).mappings()]

    def key_by_hash(self, secret_sha256: str) -> KeyRecord | None:
        t = schema.api_keys
        query = select(t.c.id, t.c.account_id, t.c.role, t.c.agent_id, t.c.revoked).where(
            t.c.secret_sha256 == secret_sha256
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return KeyRecord(row.id, row.account_id, int(row.role), row.agent_id, bool(row.revoked))
