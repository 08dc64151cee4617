"""NATS names shared by the control plane and the node agents.

Work and control messages for an agent ride JetStream subjects that end in the
agent id, so each agent's durable consumer sees only its own work; reports from
all agents share one work-queue stream consumed by the control plane's ingest.
Heartbeats are core NATS: losing one is harmless.
"""

from __future__ import annotations

import re
import socket
from typing import Any

WORK_STREAM = "RUNYARD_WORK"
CONTROL_STREAM = "RUNYARD_CONTROL"
REPORTS_STREAM = "RUNYARD_REPORTS"
INGEST_DURABLE = "runyard-ingest"

_AGENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_agent_id(agent_id: str) -> str:
    """Agent ids become NATS subject tokens: letters, digits, '-' and '_' only."""
    if not _AGENT_ID.match(agent_id):
        raise ValueError(f"agent id {agent_id!r} is invalid: use 1-64 letters, digits, '-' or '_'")
    return agent_id


def host_agent_id() -> str:
    """The host name, made safe for NATS subjects and ids: lowercase letters, digits, dashes.

    The default id of `runyard agent` and of the bootstrap agent key (`runyard server`).
    """
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")
    return name[:63] or "agent"


def work_subject(agent_id: str) -> str:
    return f"runyard.work.{agent_id}"


def control_subject(agent_id: str) -> str:
    return f"runyard.control.{agent_id}"


def reports_subject(agent_id: str) -> str:
    return f"runyard.reports.{agent_id}"


def heartbeat_subject(agent_id: str) -> str:
    return f"runyard.heartbeat.{agent_id}"


HEARTBEAT_WILDCARD = "runyard.heartbeat.*"


def agent_durable(agent_id: str) -> str:
    return f"agent-{agent_id}"


async def ensure_streams(js: Any) -> None:
    """Create the JetStream streams if they do not exist (idempotent).

    Work-queue retention: a message is gone once its consumer acks it.
    """
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    for name, subjects in (
        (WORK_STREAM, ["runyard.work.*"]),
        (CONTROL_STREAM, ["runyard.control.*"]),
        (REPORTS_STREAM, ["runyard.reports.*"]),
    ):
        config = StreamConfig(
            name=name,
            subjects=subjects,
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        )
        try:
            await js.stream_info(name)
        except Exception:
            await js.add_stream(config)
