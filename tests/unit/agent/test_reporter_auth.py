"""The agent's key rides every report it publishes."""

from __future__ import annotations

import asyncio
from typing import Any

from runyard.agent.reporter import Reporter
from runyard.v1.agent_pb2 import AgentReport
from runyard.v1.events_pb2 import AgentRegistered


class FakeJetStream:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, str]]] = []

    async def publish(self, subject: str, data: bytes, timeout: float, headers: dict[str, str]) -> None:
        self.published.append((subject, headers))


class FakeNats:
    is_closed = False


def publish(api_key: str) -> dict[str, str]:
    js = FakeJetStream()
    reporter = Reporter(FakeNats(), js, "gpu-node-1", api_key=api_key)
    asyncio.run(reporter.registered(AgentRegistered(agent_id="gpu-node-1")))
    report: Any = reporter.for_attempt("run-1", 1)
    asyncio.run(report.started())
    assert [subject for subject, _ in js.published] == ["runyard.reports.gpu-node-1"] * 2
    first, second = (headers for _, headers in js.published)
    assert first.keys() == second.keys()
    return first


def test_every_report_carries_the_key_as_a_bearer_header() -> None:
    headers = publish("ry_agent_secret")
    assert headers["Authorization"] == "Bearer ry_agent_secret"
    assert headers["Nats-Msg-Id"]


def test_without_a_key_no_authorization_header_is_sent() -> None:
    assert "Authorization" not in publish("")


def test_the_key_is_not_in_the_report_body() -> None:
    js = FakeJetStream()
    reporter = Reporter(FakeNats(), js, "a", api_key="ry_hidden")
    sent: list[bytes] = []

    async def capture(subject: str, data: bytes, timeout: float, headers: dict[str, str]) -> None:
        sent.append(data)

    js.publish = capture  # type: ignore[method-assign]
    asyncio.run(reporter.send(AgentReport(registered=AgentRegistered(agent_id="a"))))
    assert b"ry_hidden" not in sent[0]
