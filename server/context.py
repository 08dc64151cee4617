"""What the gRPC servicers, the scheduler and the ingest share in one replica.

Built once by the composition root (bootstrap.py) and passed down; nothing
reaches for module globals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from runyard.server.commands import Commands
from runyard.server.config import ServerConfig
from runyard.server.projections.runner import ProjectionRunner
from runyard.server.queries import Queries
from runyard.server.store import EventStore

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

    def on_scheduler_wakeup(self, callback: Callable[[], None]) -> None:
        self._wakeups.append(callback)

    def scheduler_wakeup(self) -> None:
        for callback in self._wakeups:
            callback()
