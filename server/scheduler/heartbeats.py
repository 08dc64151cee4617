"""Which agents are alive and which attempts they hold, from their core-NATS heartbeats.

Heartbeats are frequent and disposable, so they are never logged as events;
only the decisions they lead to (AgentLost, an attempt's lease ending, a
re-sent WorkAssignment) are. Every replica listens, so any replica can
explain the queue and a new leader knows the agents at once.

Silence is counted only while this replica could have heard: from when it
started listening, and again from when its own NATS connection came back
(`restart_watch`), since heartbeats sent meanwhile were lost to it, not unsent.
"""

from __future__ import annotations

import threading
import time

from runyard.v1 import agent_pb2

# An attempt no heartbeat listed for this long is forgotten (its lease ended long before).
FORGET_LISTED_AFTER_S = 3600.0


class Heartbeats:
    def __init__(self, timeout_s: float) -> None:
        self._timeout = timeout_s
        self._seen: dict[str, float] = {}
        self._attempts: dict[str, frozenset[str]] = {}
        # agent id -> "run_id:attempt" -> monotonic time of the latest heartbeat that listed it
        self._listed: dict[str, dict[str, float]] = {}
        self._since = time.monotonic()
        self._lock = threading.Lock()

    @property
    def since(self) -> float:
        """Since when (monotonic) this replica has been listening without a gap."""
        with self._lock:
            return self._since

    def restart_watch(self) -> None:
        """Our NATS connection was down: heartbeats may have been missed, so silence counts from now."""
        with self._lock:
            self._since = time.monotonic()

    def record(self, beat: agent_pb2.AgentHeartbeat) -> bool:
        """Returns True when the agent was not known to be alive before."""
        now = time.monotonic()
        with self._lock:
            new = beat.agent_id not in self._seen or not self._alive(beat.agent_id)
            self._seen[beat.agent_id] = now
            self._attempts[beat.agent_id] = frozenset(beat.attempts)
            listed = self._listed.setdefault(beat.agent_id, {})
            for key in beat.attempts:
                listed[key] = now
            for key in [k for k, at in listed.items() if now - at > FORGET_LISTED_AFTER_S]:
                del listed[key]
            return new

    def alive(self, agent_id: str) -> bool:
        with self._lock:
            return self._alive(agent_id)

    def _alive(self, agent_id: str) -> bool:
        seen = self._seen.get(agent_id)
        return seen is not None and time.monotonic() - seen < self._timeout

    def lost(self, agent_id: str) -> bool:
        """Silent for longer than the timeout, counting from when we (last) started listening."""
        with self._lock:
            last = max(self._seen.get(agent_id, self._since), self._since)
        return time.monotonic() - last >= self._timeout

    def last_listed(self, agent_id: str, run_id: str, attempt: int) -> float | None:
        """When (monotonic) a heartbeat of the agent last listed the attempt; None: never heard of."""
        with self._lock:
            return self._listed.get(agent_id, {}).get(f"{run_id}:{attempt}")

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
            self._listed.pop(agent_id, None)
