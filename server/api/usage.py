"""UsageService: billed GPU time per account and period, and per attempt.

A user sees only their own account's usage; an admin sees any account, or
every account when the request names none. Figures come from the usage
projection; attempts still holding GPUs are billed up to the moment of the
request (and never beyond the request's `to`).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Literal, cast

import grpc

from runyard.server.api import auth
from runyard.server.api.errors import Context, page_size
from runyard.server.context import ServerContext
from runyard.server.domain import billing
from runyard.server.queries.usage import PageKey, UsageQueries
from runyard.v1 import usage_service_pb2 as pb
from runyard.v1 import usage_service_pb2_grpc as pb_grpc

_PERIODS: dict[int, billing.Period] = {
    pb.USAGE_PERIOD_UNSPECIFIED: "day",
    pb.USAGE_PERIOD_DAY: "day",
    pb.USAGE_PERIOD_MONTH: "month",
}


#: The window a usage query may name: a datetime's range less a day on each side for time-zone arithmetic.
_EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
_LATEST = datetime(9999, 12, 30, tzinfo=UTC)


async def _when(request: pb.GetUsageRequest, field: Literal["from", "to"], context: Context) -> datetime | None:
    """The request's `from` or `to` as a datetime (None when unset); INVALID_ARGUMENT naming it when out of range."""
    if not request.HasField(field):
        return None
    stamp = getattr(request, field)
    when: datetime | None
    try:
        when = cast(datetime, stamp.ToDatetime(UTC))
    except (ValueError, OverflowError):
        when = None
    if when is None or not _EARLIEST <= when <= _LATEST:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field}: {stamp.seconds}s {stamp.nanos}ns is not a time between 0001-01-02 and 9999-12-30",
        )
    return when


class UsageService(pb_grpc.UsageServiceServicer):
    def __init__(self, ctx: ServerContext) -> None:
        self._queries = UsageQueries(ctx.store.read_engine)

    async def _scope(self, account_id: str, context: Context) -> str | None:
        """The account the caller may read here; None means every account (admins only)."""
        if account_id:
            await auth.require_account_access(context, account_id)
            return account_id
        return auth.account_scope() or None

    async def GetUsage(self, request: pb.GetUsageRequest, context: Context) -> pb.GetUsageResponse:
        period = _PERIODS.get(request.period)
        if period is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"period: unknown value {request.period}")
        window_from = await _when(request, "from", context)
        window_to = await _when(request, "to", context)
        if window_from is not None and window_to is not None and window_to <= window_from:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "to: must be later than from")
        scope = await self._scope(request.account_id, context)
        now = datetime.now(UTC)
        attempts = await asyncio.to_thread(self._queries.attempts, scope, window_from, window_to)
        lines, total = billing.summarize(attempts, period, now, window_from, window_to)
        return pb.GetUsageResponse(
            rows=[
                pb.UsageRow(
                    account_id=line.account_id,
                    period=line.period,
                    gpu_model=line.gpu_model,
                    gpu_seconds=billing.seconds(line.gpu_micros),
                    attempts=line.attempts,
                )
                for line in lines
            ],
            total_gpu_seconds=billing.seconds(total),
        )

    async def ListRunUsage(self, request: pb.ListRunUsageRequest, context: Context) -> pb.ListRunUsageResponse:
        try:
            after = PageKey.decode(request.page_token) if request.page_token else None
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        scope = await self._scope(request.account_id, context)
        size = page_size(request.page_size)
        attempts, last = await asyncio.to_thread(
            self._queries.list_attempts, datetime.now(UTC), scope, request.experiment_id, after, size
        )
        return pb.ListRunUsageResponse(attempts=attempts, next_page_token=last.encode() if last else "")
