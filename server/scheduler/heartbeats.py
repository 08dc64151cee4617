"""Which agents are alive and which attempts they hold, from their core-NATS heartbeats.

Heartbeats are frequent and disposable, so they are never logged as events;
only the decisions they lead to (AgentLost, a re-sent WorkAssignment) are.
Every replica listens, so any replica can explain the queue and a new leader
knows the agents at once.
"""

from __future__ import annotations

import threading
import time

from runyard.v1 import agent_pb2


class Heartbeats:
    def __init__(self, timeout_s: float) -> None:
        self._timeout = timeout_s
        self._seen: dict[str, float] = {}
        self._attempts: dict[str, frozenset[str]] = {}
        self._since = time.monotonic()
        self._lock = threading.Lock()

    def record(self, beat: agent_pb2.AgentHeartbeat) -> bool:
        """Returns True when the agent was not known to be alive before."""
        with self._lock:
            new = beat.agent_id not in self._seen or not self._alive(beat.agent_id)
            self._seen[beat.agent_id] = time.monotonic()
            self._attempts[beat.agent_id] = frozenset(beat.attempts)
            return new

    def alive(self, agent_id: str) -> bool:
        with self._lock:
            return self._alive(agent_id)

    def _alive(self, agent_id: str) -> bool:
        seen = self._seen.get(agent_id)
        return seen is not None and time.monotonic() - seen < self._timeout

    def lost(self, agent_id: str) -> bool:
        """Silent for longer than the timeout, counting from when we started listening."""
        with self._lock:
            last = self._seen.get(agent_id, self._since)
        return time.monotonic() - last >= self._timeout

    def holds(self, agent_id: str, run_id: str, attempt: int, since: float) -> bool | None:
        """Did the agent's latest heartbeat, sent after `since` (monotonic), list the attempt?

        None when no heartbeat arrived after `since` yet: nothing can be said.
        """
        with self._lock:
            seen = self._seen.get(agent_id)
            if seen is None or seen <= since:
                return None
            return f"{run_id}:{attempt}" in self._attempts.get(agent_id, frozenset())

    def forget(self, agent_id: str) -> None:
        with self._lock:
            self._seen.pop(agent_id, None)
            self._attempts.pop(agent_id, None)
