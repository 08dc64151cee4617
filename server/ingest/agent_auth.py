"""Is a message on the bus from the agent it names? The check shared by reports and heartbeats.

NATS users (runyard.natsauth) already keep an agent to its own subjects; this
is the second lock, which holds even on a nats-server without users: each
report and heartbeat carries ``Authorization: Bearer <agent key>``, the key
must be a live agent key bound to exactly the agent id the message names
(`may_report_as`), and the subject must be that agent's own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import structlog

from runyard import bus
from runyard.server.credentials import Credentials, may_report_as
from runyard.v1 import agent_pb2

log = structlog.get_logger(__name__)

WARN_EVERY_S = 60.0


class AgentAuth:
    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials
        self._warned: dict[str, float] = {}

    async def refusal(self, headers: Mapping[str, str] | None, agent_id: str, subject: str, expected: str) -> str:
        """Why a message of `agent_id` that came on `subject` is not its own ("" when it is)."""
        secret = _bearer((headers or {}).get("Authorization", ""))
        if not secret:
            return "no 'Authorization: Bearer <agent key>' header (start the agent with --api-key)"
        fresh, principal = self._credentials.cached(secret)
        if not fresh:
            principal = await asyncio.to_thread(self._credentials.principal, secret)
        if not may_report_as(principal, agent_id):
            return f"the key is not a valid agent key bound to agent {agent_id!r}"
        if subject != expected:
            return f"a message of agent {agent_id!r} arrived on {subject}"
        return ""

    async def accept_heartbeat(self, msg: object, beat: agent_pb2.AgentHeartbeat) -> bool:
        """Does a heartbeat count? Only with its agent's key, on its agent's subject.

        Heartbeats are not logged as events, so a refused one is only logged,
        at most once a minute per agent id (a flood must not flood the log).
        """
        subject = str(getattr(msg, "subject", ""))
        try:
            expected = bus.heartbeat_subject(bus.check_agent_id(beat.agent_id))
        except ValueError as e:
            refusal = str(e)
        else:
            refusal = await self.refusal(getattr(msg, "headers", None), beat.agent_id, subject, expected)
        if not refusal:
            return True
        now = time.monotonic()
        key = beat.agent_id[:64]
        if now - self._warned.get(key, -WARN_EVERY_S) >= WARN_EVERY_S:
            if len(self._warned) > 10_000:
                self._warned.clear()
            self._warned[key] = now
            log.warning("heartbeat ignored", agent_id=key, subject=subject[:200], reason=refusal)
        return False


def _bearer(value: str) -> str:
    scheme, _, secret = value.strip().partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else ""
