"""Why each queued run waits, and its place in its account's queue, on any replica.

The leader's decisions are not stored anywhere; instead any replica runs the
same pure policy (`runyard.server.domain.scheduling.schedule`) over the read
models and the heartbeats it hears itself, and reads the reasons off the
result. So `show`, `list` and WatchRun say the same thing whichever replica
answers, and nothing extra is written per decision.

One computation serves every caller for a short while (it looks at the whole
queue): it is redone when the read models have moved on and the last one is a
little old, or when it is older than `MAX_AGE_S`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from runyard.server.domain.scheduling import schedule
from runyard.server.queries.scheduling import SchedulingReads
from runyard.v1 import common_pb2, resources_pb2

# Recompute at most this often while the log moves...
MIN_AGE_S = 0.25
# ...and at least this often while it does not (heartbeats change who is alive).
MAX_AGE_S = 2.0


@dataclass(frozen=True)
class QueueStatus:
    reason: str
    #: 1-based place in the account's queue.
    position: int


class QueueExplainer:
    def __init__(
        self,
        reads: SchedulingReads,
        alive: Callable[[str], bool],
        read_position: Callable[[], int],
    ) -> None:
        self._reads = reads
        self._alive = alive
        self._read_position = read_position
        self._lock = threading.Lock()
        self._status: dict[str, QueueStatus] = {}
        self._at = -1.0
        self._position = -1

    def status(self, run_id: str) -> QueueStatus | None:
        """The run's queue status, or None when it is not queued (as far as the read models say)."""
        return self._current().get(run_id)

    def annotate(self, runs: Iterable[resources_pb2.Run]) -> None:
        """Fill waiting_reason and queue_position of the queued runs among `runs`."""
        queued = [r for r in runs if r.state == common_pb2.RUN_STATE_QUEUED]
        if not queued:
            return
        current = self._current()
        for run in queued:
            found = current.get(run.id)
            if found is not None:
                run.waiting_reason = found.reason
                run.queue_position = found.position

    def _current(self) -> dict[str, QueueStatus]:
        with self._lock:
            now = time.monotonic()
            age = now - self._at
            position = self._read_position()
            if age < MIN_AGE_S or (age < MAX_AGE_S and position == self._position):
                return self._status
            self._status = self._compute()
            self._at, self._position = time.monotonic(), position
            return self._status

    def _compute(self) -> dict[str, QueueStatus]:
        snapshot = self._reads.snapshot(self._alive)
        decision = schedule(snapshot.queue, snapshot.agents, snapshot.accounts)
        out = {w.run_id: QueueStatus(w.reason, w.position) for w in decision.waiting}
        for placement in decision.placements:
            # Runs the leader is about to start: at the front, with where they go.
            out[placement.run_id] = QueueStatus(f"starting: agent {placement.agent_id} has room for it", 1)
        return out
