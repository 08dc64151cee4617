"""What the gRPC servicers, the scheduler and the ingest share in one replica.

Built once by the composition root (bootstrap.py) and passed down; nothing
reaches for module globals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from runyard.server.commands import Commands
from runyard.server.config import ServerConfig
from runyard.server.projections.runner import ProjectionRunner
from runyard.server.queries.resources import Queries
from runyard.server.store import EventStore
from runyard.v1 import common_pb2, resources_pb2

if TYPE_CHECKING:
    from runyard.server.queries.queue_explainer import QueueExplainer
    from runyard.server.queries.scheduling import SchedulingReads

T = TypeVar("T")


@dataclass
class ServerContext:
    config: ServerConfig
    store: EventStore
    commands: Commands
    queries: Queries
    projections: ProjectionRunner
    objects: Any  # runyard.objectstore.ObjectStore
    # Set by the dispatcher once NATS is connected: sends a cancel to the agent holding a run.
    cancel_sender: Callable[[str], Any] | None = None
    # Set by the composition root: why queued runs wait (any replica), and what submit refuses.
    queue_explainer: QueueExplainer | None = None
    scheduling_reads: SchedulingReads | None = None
    _wakeups: list[Callable[[], None]] = field(default_factory=list)

    async def read_after(self, position: int, read: Callable[[], T], timeout: float = 10.0) -> T:
        """Read-your-writes: wait until the read models include `position`, then read."""
        if position:
            await asyncio.to_thread(self.projections.wait_for, position, timeout)
        return await asyncio.to_thread(read)

    async def stop_runs(self, run_ids: Sequence[str]) -> None:
        if self.cancel_sender is None:
            return
        for run_id in run_ids:
            await self.cancel_sender(run_id)

    async def explain_queue(self, runs: Iterable[resources_pb2.Run]) -> None:
        """Fill waiting_reason and queue_position of the queued runs among `runs`."""
        queued = [r for r in runs if r.state == common_pb2.RUN_STATE_QUEUED]
        if queued and self.queue_explainer is not None:
            await asyncio.to_thread(self.queue_explainer.annotate, queued)

    def on_scheduler_wakeup(self, callback: Callable[[], None]) -> None:
        self._wakeups.append(callback)

    def scheduler_wakeup(self) -> None:
        for callback in self._wakeups:
            callback()
