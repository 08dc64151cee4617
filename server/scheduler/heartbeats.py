"""Which agents are alive, from their core-NATS heartbeats.

Heartbeats are frequent and disposable, so they are never logged as events;
only the decision they lead to (AgentLost) is.
"""

from __future__ import annotations

import time

from runyard.v1 import agent_pb2


class Heartbeats:
    def __init__(self, timeout_s: float) -> None:
        self._timeout = timeout_s
        self._seen: dict[str, float] = {}
        self._since = time.monotonic()

    def record(self, beat: agent_pb2.AgentHeartbeat) -> bool:
        """Returns True when the agent was not known to be alive before."""
        new = beat.agent_id not in self._seen or not self.alive(beat.agent_id)
        self._seen[beat.agent_id] = time.monotonic()
        return new

    def alive(self, agent_id: str) -> bool:
        seen = self._seen.get(agent_id)
        return seen is not None and time.monotonic() - seen < self._timeout

    def lost(self, agent_id: str) -> bool:
        """Silent for longer than the timeout, counting from when we started listening."""
        last = self._seen.get(agent_id, self._since)
        return time.monotonic() - last >= self._timeout

    def forget(self, agent_id: str) -> None:
        self._seen.pop(agent_id, None)
