"""Drive a real agent over a real NATS: send work and cancels, read its reports.

The test plays the control plane: it publishes WorkAssignments and
AgentControls on the agent's subjects and reads the agent's reports from the
REPORTS stream with its own consumer, exactly as ingest would.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import tarfile
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig

from runyard import bus
from runyard.agent.config import AgentConfig
from runyard.agent.main import run_agent
from runyard.v1.agent_pb2 import AgentControl, AgentReport, CancelAttempt, WorkAssignment
from runyard.v1.common_pb2 import LogLine, LogStream, MetricPoint

TERMINAL = ("completed", "failed", "canceled")


def new_agent_id() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def code_tar(files: Mapping[str, str]) -> bytes:
    """A tar.gz of the given files, as the CLI would pack a code folder."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class AgentHarness:
    config: AgentConfig
    nc: Any
    js: Any
    reports_sub: Any
    stop: asyncio.Event
    task: asyncio.Task[None]
    received: list[AgentReport] = field(default_factory=list)

    @property
    def agent_id(self) -> str:
        return self.config.agent_id

    async def send_work(self, work: WorkAssignment) -> None:
        await self.js.publish(bus.work_subject(self.agent_id), work.SerializeToString())

    async def cancel(self, run_id: str, attempt: int, grace_seconds: int = 0) -> None:
        control = AgentControl(cancel=CancelAttempt(run_id=run_id, attempt=attempt, grace_seconds=grace_seconds))
        await self.js.publish(bus.control_subject(self.agent_id), control.SerializeToString())

    async def next_report(self, timeout: float = 15.0) -> AgentReport:
        msgs = await self.reports_sub.fetch(1, timeout=timeout)
        await msgs[0].ack()
        report = AgentReport.FromString(msgs[0].data)
        self.received.append(report)
        return report

    async def wait_for(self, run_id: str, kind: str, timeout: float = 15.0) -> list[AgentReport]:
        """Reports of run_id up to and including the first of `kind`."""
        got: list[AgentReport] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                kinds = [r.WhichOneof("body") for r in got]
                raise AssertionError(f"no {kind} report for {run_id} within {timeout}s; got {kinds}")
            try:
                report = await self.next_report(timeout=min(left, 5.0))
            except TimeoutError:
                continue
            if report.run_id != run_id:
                continue
            got.append(report)
            if report.WhichOneof("body") == kind:
                return got

    async def until_terminal(self, run_id: str, timeout: float = 20.0) -> list[AgentReport]:
        got: list[AgentReport] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                kinds = [r.WhichOneof("body") for r in got]
                raise AssertionError(f"run {run_id} did not end within {timeout}s; reports so far {kinds}")
            try:
                report = await self.next_report(timeout=min(left, 5.0))
            except TimeoutError:
                continue
            if report.run_id == run_id:
                got.append(report)
                if report.WhichOneof("body") in TERMINAL:
                    return got

    async def stop_agent(self, timeout: float = 20.0) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=timeout)


def kinds(reports: list[AgentReport]) -> list[str]:
    return [str(r.WhichOneof("body")) for r in reports]


def transitions(reports: list[AgentReport]) -> list[str]:
    return [k for k in kinds(reports) if k not in ("logged", "metrics")]


def log_lines(reports: list[AgentReport]) -> list[LogLine]:
    return [line for r in reports if r.HasField("logged") for line in r.logged.lines]


def texts(reports: list[AgentReport], stream: LogStream.ValueType) -> list[str]:
    return [line.text for line in log_lines(reports) if line.stream == stream]


def metric_points(reports: list[AgentReport]) -> list[MetricPoint]:
    return [p for r in reports if r.HasField("metrics") for p in r.metrics.points]


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig) -> AsyncIterator[AgentHarness]:
    """Start the agent, wait for its registration, and stop it afterwards."""
    nc = await nats.connect(config.nats_url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    # Durable, so that it survives a NATS restart in the middle of a test.
    sub = await js.pull_subscribe(
        bus.reports_subject(config.agent_id),
        durable=f"test-{config.agent_id}",
        stream=bus.REPORTS_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(config, stop))
    harness = AgentHarness(config, nc, js, sub, stop, task)
    try:
        first = await harness.next_report(timeout=15.0)
        assert first.WhichOneof("body") == "registered", first
        yield harness
    finally:
        if not task.done():
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=30)
        await nc.close()
