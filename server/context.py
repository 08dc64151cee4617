"""The read side one replica's adapters share: config, the log, the read models and how to wait for them.

Built once by the composition root (bootstrap.py) and passed down; nothing
reaches for module globals. Writes do not go through here: every adapter is
handed the application's bus (`runyard.server.app.bus.MessageBus`), which runs
the command and what follows its commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from runyard.server.config import ServerConfig
from runyard.server.projections.runner import ProjectionRunner
from runyard.server.queries.resources import Queries
from runyard.server.store import EventStore
from runyard.v1 import common_pb2, resources_pb2

if TYPE_CHECKING:
    from runyard.server.queries.queue_explainer import QueueExplainer

T = TypeVar("T")


@dataclass
class ServerContext:
    config: ServerConfig
    store: EventStore
    queries: Queries
    projections: ProjectionRunner
    objects: Any  # runyard.objectstore.ObjectStore
    # Set by the composition root: why queued runs wait (any replica).
    queue_explainer: QueueExplainer | None = None

    async def read_after(self, position: int, read: Callable[[], T], timeout: float = 10.0) -> T:
        """Read-your-writes: wait until the read models include `position`, then read."""
        if position:
            await asyncio.to_thread(self.projections.wait_for, position, timeout)
        return await asyncio.to_thread(read)

    async def explain_queue(self, runs: Iterable[resources_pb2.Run]) -> None:
        """Fill waiting_reason and queue_position of the queued runs among `runs`."""
        queued = [r for r in runs if r.state == common_pb2.RUN_STATE_QUEUED]
        if queued and self.queue_explainer is not None:
            await asyncio.to_thread(self.queue_explainer.annotate, queued)
