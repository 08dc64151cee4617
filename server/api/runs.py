"""RunService: read, cancel and watch runs; their stored logs and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from runyard.server.api import auth
from runyard.server.api.errors import Context, abort, decode_page_token, page_size
from runyard.server.api.paging import MAX_PAGE_BYTES, fitting
from runyard.server.api.watching import Watcher
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import CancelRun
from runyard.server.app.unit_of_work import Outcome
from runyard.server.context import ServerContext
from runyard.server.domain import events as ev
from runyard.v1 import events_pb2
from runyard.v1 import run_service_pb2 as pb
from runyard.v1 import run_service_pb2_grpc as pb_grpc


class RunService(pb_grpc.RunServiceServicer):
    def __init__(self, ctx: ServerContext, bus: MessageBus, watcher: Watcher) -> None:
        self._ctx = ctx
        self._bus = bus
        self._watcher = watcher

    async def _run_or_404(self, run_id: str, context: Context) -> None:
        """NOT_FOUND unless the run exists and the caller may see it (its account's, or an admin).

        Read from the log, not a read model, so a run is found the moment it is created.
        """
        if not run_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "run_id: is required")
        opened = await asyncio.to_thread(self._ctx.store.read_stream, ev.run_stream(run_id), 0, 1)
        owner = None
        if opened:
            created = ev.decode(opened[0].type, opened[0].data)
            owner = created.account_id if isinstance(created, events_pb2.RunCreated) else None
        await auth.require_owner(context, owner, "run", run_id)

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        run = await asyncio.to_thread(self._ctx.queries.get_run, request.run_id, True)
        await auth.require_owner(context, run and run.account_id, "run", request.run_id)
        if run is None:
            return pb.GetRunResponse(run=run)
        await self._ctx.explain_queue([run])
        queries = self._ctx.queries
        checkpoints = await asyncio.to_thread(queries.checkpoints, request.run_id)
        attempts = await asyncio.to_thread(queries.attempts, request.run_id)
        return pb.GetRunResponse(run=run, checkpoints=checkpoints, attempts=attempts)

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        try:
            after = decode_page_token(request.page_token)
        except ValueError as exc:
            await abort(context, exc)
        size = page_size(request.page_size)
        runs = await asyncio.to_thread(
            self._ctx.queries.list_runs, request.experiment_id, list(request.states), after, size, auth.account_scope()
        )
        token = ""
        keep = fitting(runs)
        if len(runs) == size or keep < len(runs):
            runs = runs[:keep]
            positions = await asyncio.to_thread(self._ctx.queries.run_positions, [runs[-1].id])
            token = str(positions[runs[-1].id])
        await self._ctx.explain_queue(runs)
        return pb.ListRunsResponse(runs=runs, next_page_token=token)

    async def CancelRun(self, request: pb.CancelRunRequest, context: Context) -> pb.CancelRunResponse:
        await self._run_or_404(request.run_id, context)
        try:
            outcome: Outcome = await self._bus.handle(CancelRun(request.run_id, "canceled by user"))
        except Exception as exc:
            await abort(context, exc)
        run = await self._ctx.read_after(outcome.position, lambda: self._ctx.queries.get_run(request.run_id))
        return pb.CancelRunResponse(run=run)

    async def WatchRun(self, request: pb.WatchRunRequest, context: Context) -> AsyncIterator[pb.WatchRunResponse]:
        await self._run_or_404(request.run_id, context)
        try:
            async for update in self._watcher.run(request.run_id, request.cursor):
                yield pb.WatchRunResponse(update=update)
        except ValueError as exc:
            await abort(context, exc)

    async def GetRunLogs(self, request: pb.GetRunLogsRequest, context: Context) -> pb.GetRunLogsResponse:
        """Pages by log batch: the token is the stream version of the last batch returned."""
        await self._run_or_404(request.run_id, context)
        try:
            after = decode_page_token(request.page_token)
        except ValueError as exc:
            await abort(context, exc)
        want = page_size(request.page_size, default=1000, maximum=10_000)
        response = pb.GetRunLogsResponse()
        room = MAX_PAGE_BYTES
        stream = ev.run_logs_stream(request.run_id)
        while len(response.lines) < want:
            records = await asyncio.to_thread(self._ctx.store.read_stream, stream, after, 100)
            if not records:
                return response
            for record in records:
                batch = ev.decode(record.type, record.data)
                assert isinstance(batch, events_pb2.RunLogged)
                # A page holds whole batches (the token is a batch's version); cut by bytes too.
                room -= batch.ByteSize()
                if room < 0 and response.lines:
                    response.next_page_token = str(after)
                    return response
                response.lines.extend(batch.lines)
                after = record.version
                if len(response.lines) >= want:
                    break
        response.next_page_token = str(after)
        return response

    async def GetRunMetrics(self, request: pb.GetRunMetricsRequest, context: Context) -> pb.GetRunMetricsResponse:
        """Every point, or at most `max_points` per metric downsampled as server/queries/downsample.py says."""
        await self._run_or_404(request.run_id, context)
        return await asyncio.to_thread(
            self._ctx.queries.metric_history_reply, request.run_id, list(request.names), request.max_points
        )
