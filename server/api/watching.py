"""History-then-live streams of run updates, resumable from a cursor.

A watch is a filtered read of the log from a position: first everything that
is already stored, then whatever is appended, woken by the log head. The
cursor of every update is the log position of its event, so a client that
reconnects (to this replica or another, before or after a restart) with its
last cursor continues with the next event: no gap, no duplicate.

An empty filtered read has still seen everything up to the head known before
it (positions become visible in order), so the watch then waits for the log
to grow beyond that head, not beyond its own last event: other runs' events
do not make it spin.

While a watched run is QUEUED, the watch also says why it waits and its place
in its account's queue (RunUpdate.queue) whenever that changes. That is no
event: its cursor repeats the last event's, so resuming from it loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from runyard.server.api.head import LogHead
from runyard.server.api.updates import UpdateBuilder, decode_cursor, encode_cursor
from runyard.server.domain import events as ev
from runyard.server.queries.queue_explainer import QueueExplainer, QueueStatus
from runyard.server.queries.resources import Queries
from runyard.server.store import EventStore
from runyard.v1 import common_pb2, watch_pb2

POLL_S = 1.0
BATCH = 500


class Watcher:
    def __init__(
        self, store: EventStore, queries: Queries, head: LogHead, explainer: QueueExplainer | None = None
    ) -> None:
        self._store = store
        self._queries = queries
        self._head = head
        self._explainer = explainer

    async def run(self, run_id: str, cursor: str) -> AsyncIterator[watch_pb2.RunUpdate]:
        after = decode_cursor(cursor)
        streams = [ev.run_stream(run_id), ev.run_logs_stream(run_id), ev.run_metrics_stream(run_id)]
        builder = UpdateBuilder()
        if after:
            # Resumed: the points before the cursor decide which later ones repeat an earlier attempt's.
            builder.repeats.seed(run_id, await asyncio.to_thread(self._queries.metric_steps, run_id, after))
        told: QueueStatus | None = None
        looked_for_end = False
        while True:
            head = self._head.position
            events = await self._read(after, streams, None)
            for event in events:
                after = event.position
                update = builder.build(event)
                if update is None:
                    continue
                yield update
                if update.HasField("status") and update.status.final:
                    return
            if builder.states.get(run_id) != common_pb2.RUN_STATE_QUEUED:
                told = None  # a re-queued run says it again
            elif (queue := await self._queue_status(run_id)) is not None and queue != told and after:
                told = queue
                yield watch_pb2.RunUpdate(
                    cursor=encode_cursor(after),
                    run_id=run_id,
                    queue=watch_pb2.RunQueueStatus(reason=queue.reason, position=queue.position),
                )
            if not events:
                # Only a watch resumed past the run's final update can miss it: looked at once, not on every
                # wake-up (other runs' commits wake the watch many times a second under load).
                if not looked_for_end:
                    looked_for_end = True
                    if await self._ended_before(run_id, after):
                        return
                await self._head.wait_beyond(max(after, head), POLL_S)

    async def experiment(self, experiment_id: str, cursor: str) -> AsyncIterator[watch_pb2.RunUpdate]:
        after = decode_cursor(cursor)
        builder = UpdateBuilder()
        while True:
            head = self._head.position
            events = await self._read(after, None, experiment_id)
            for event in events:
                after = event.position
                update = builder.build(event)
                if update is not None:
                    yield update
            if not events:
                # Every event of the experiment is behind us; if the read model
                # says all its runs ended, nothing more will come.
                if await asyncio.to_thread(self._queries.all_runs_ended, experiment_id):
                    return
                await self._head.wait_beyond(max(after, head), POLL_S)

    async def _queue_status(self, run_id: str) -> QueueStatus | None:
        """None when the read models do not (yet, or any more) show the run queued."""
        if self._explainer is None:
            return None
        return await asyncio.to_thread(self._explainer.status, run_id)

    async def _read(self, after: int, streams: Sequence[str] | None, correlation_id: str | None) -> list:  # type: ignore[type-arg]
        return await asyncio.to_thread(
            self._store.read_all, after, BATCH, stream_ids=streams, correlation_id=correlation_id
        )

    async def _ended_before(self, run_id: str, after: int) -> bool:
        """A resumed watch of a run whose final update is behind its cursor ends at once."""
        run = await asyncio.to_thread(self._queries.get_run, run_id)
        if run is None or not run.HasField("ended_at"):
            return False
        final = await asyncio.to_thread(self._store.read_stream, ev.run_stream(run_id))
        return bool(final) and final[-1].position <= after
