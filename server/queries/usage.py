"""Reads of the usage projection (attempt_usage), for UsageService and GetRun.

An attempt still holding its GPUs has no end in the table: it is billed up to
the `now` the caller passes, so one request sees one consistent instant.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, or_, select

from runyard.server.domain import billing
from runyard.server.projections import schema
from runyard.v1 import usage_service_pb2

_t = schema.attempt_usage
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PageKey:
    """Where a page of attempts ended: attempts are listed by (started_at, run_id, attempt)."""

    started_at: datetime
    run_id: str
    attempt: int

    def encode(self) -> str:
        raw = f"{billing.micros(billing.utc(self.started_at) - _EPOCH)}|{self.run_id}|{self.attempt}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> PageKey:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            started_us, run_id, attempt = raw.split("|")
            key = cls(_EPOCH + timedelta(microseconds=int(started_us)), run_id, int(attempt))
        except (ValueError, UnicodeDecodeError, OverflowError):
            key = None
        # A forged token must not reach the database: a run id it can store, an attempt within an integer.
        if key is None or not _TOKEN_RUN_ID.fullmatch(key.run_id) or not 0 <= key.attempt < 2**31:
            shown = token if len(token) <= 40 else f"{token[:40]}..."
            raise ValueError(f"page_token: {shown!r} is not a token from a previous page")
        return key


_TOKEN_RUN_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def _attempt(row: Any) -> billing.BilledAttempt:
    return billing.BilledAttempt(
        run_id=row.run_id,
        attempt=row.attempt,
        account_id=row.account_id,
        gpus=row.gpus,
        gpu_model=row.gpu_model,
        started_at=billing.utc(row.started_at),
        ended_at=billing.utc(row.ended_at) if row.ended_at is not None else None,
    )


def billed_micros(attempt: billing.BilledAttempt, now: datetime) -> int:
    """GPU-microseconds of one attempt, an open one up to `now`."""
    end = attempt.ended_at if attempt.ended_at is not None else max(billing.utc(now), attempt.started_at)
    return billing.gpu_micros(attempt.started_at, end, attempt.gpus)


class UsageQueries:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def attempts(
        self,
        account_id: str | None,
        window_from: datetime | None = None,
        window_to: datetime | None = None,
    ) -> list[billing.BilledAttempt]:
        """Attempts of one account (None: every account) whose interval may touch [from, to)."""
        query = select(_t)
        if account_id is not None:
            query = query.where(_t.c.account_id == account_id)
        if window_to is not None:
            query = query.where(_t.c.started_at < billing.utc(window_to))
        if window_from is not None:
            query = query.where(or_(_t.c.ended_at.is_(None), _t.c.ended_at >= billing.utc(window_from)))
        with self._engine.connect() as conn:
            return [_attempt(r) for r in conn.execute(query)]

    def list_attempts(
        self,
        now: datetime,
        account_id: str | None,
        experiment_id: str = "",
        after: PageKey | None = None,
        limit: int = 100,
    ) -> tuple[list[usage_service_pb2.AttemptUsage], PageKey | None]:
        """One page of attempts, oldest first, and the key to pass for the next page (None at the end)."""
        query = select(_t)
        if account_id is not None:
            query = query.where(_t.c.account_id == account_id)
        if experiment_id:
            query = query.where(_t.c.experiment_id == experiment_id)
        if after is not None:
            at = billing.utc(after.started_at)
            query = query.where(
                or_(
                    _t.c.started_at > at,
                    and_(
                        _t.c.started_at == at,
                        or_(
                            _t.c.run_id > after.run_id, and_(_t.c.run_id == after.run_id, _t.c.attempt > after.attempt)
                        ),
                    ),
                )
            )
        query = query.order_by(_t.c.started_at, _t.c.run_id, _t.c.attempt).limit(limit)
        with self._engine.connect() as conn:
            rows = list(conn.execute(query))
        out = []
        for row in rows:
            a = _attempt(row)
            usage = usage_service_pb2.AttemptUsage(
                run_id=a.run_id,
                attempt=a.attempt,
                account_id=a.account_id,
                experiment_id=row.experiment_id,
                agent_id=row.agent_id,
                gpus=a.gpus,
                gpu_model=a.gpu_model,
                gpu_seconds=billing.seconds(billed_micros(a, now)),
            )
            usage.started_at.FromDatetime(a.started_at)
            if a.ended_at is not None:
                usage.ended_at.FromDatetime(a.ended_at)
            out.append(usage)
        last = rows[-1] if len(rows) == limit else None
        key = PageKey(billing.utc(last.started_at), last.run_id, last.attempt) if last is not None else None
        return out, key


def run_gpu_seconds(conn: Connection, run_ids: Sequence[str], now: datetime) -> dict[str, float]:
    """Billed GPU-seconds of each run, all its attempts together (open ones up to `now`)."""
    if not run_ids:
        return {}
    totals: dict[str, int] = {}
    for row in conn.execute(select(_t).where(_t.c.run_id.in_(list(run_ids)))):
        totals[row.run_id] = totals.get(row.run_id, 0) + billed_micros(_attempt(row), now)
    return {run_id: billing.seconds(us) for run_id, us in totals.items()}
