"""Publishing AgentReports to the control plane over JetStream.

Every report carries a fresh uuid4 event_id, sent as the Nats-Msg-Id header:
a publish that is retried after a lost ack is dropped by JetStream's duplicate
window, and the ingest side uses the same id to make a redelivery a no-op. A
report is retried until JetStream acknowledges it (backing off up to 2 s), so
a NATS restart delays reports but never loses one; only a connection that is
closed for good (agent shutting down) or a report too large to ever fit ends
the retries, with an exception.

Every report carries the agent's API key as ``Authorization: Bearer <key>``:
the control plane stores only reports of a ROLE_AGENT key allowed to speak
for this agent id.

All of an agent's reports go on one subject, so JetStream keeps them in
publish order; `AttemptReports` serializes one attempt's publishes so its
lines, metrics and transitions are stored in the order they happened.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import nats.errors
import structlog

from runyard import bus
from runyard.storable import storable
from runyard.v1.agent_pb2 import AgentReport, AttemptFailed
from runyard.v1.common_pb2 import Checkpoint, FailureReason, LogLine, MetricPoint
from runyard.v1.events_pb2 import (
    AgentRegistered,
    RunCanceled,
    RunCheckpointed,
    RunCompleted,
    RunStaging,
    RunStarted,
    RunUploading,
)

log = structlog.get_logger("runyard.agent.reporter")

# A batch of more lines or points than this is built and serialized off the event loop.
BUILD_ON_LOOP_ITEMS = 200


class ReportLostError(Exception):
    """A report could not be stored and never will be (connection closed, payload too large)."""


class Reporter:
    """Sends one agent's reports, retrying until JetStream has stored each one."""

    def __init__(
        self,
        nc: Any,
        js: Any,
        agent_id: str,
        publish_timeout_s: float = 5.0,
        max_backoff_s: float = 2.0,
        api_key: str = "",
    ) -> None:
        self._nc = nc
        self._js = js
        self.agent_id = agent_id
        self._subject = bus.reports_subject(agent_id)
        self._timeout = publish_timeout_s
        self._max_backoff = max_backoff_s
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    @property
    def auth_headers(self) -> dict[str, str]:
        """The agent key as a header (empty without a key): reports and heartbeats carry it."""
        return dict(self._auth)

    def prepare(self, report: AgentReport) -> bytes:
        """Fill in event_id (when empty) and agent_id; the report's bytes. Safe in a worker thread."""
        if not report.event_id:
            report.event_id = str(uuid.uuid4())
        report.agent_id = self.agent_id
        return report.SerializeToString()

    async def send(self, report: AgentReport) -> None:
        """Store one report; fills in event_id and agent_id when empty."""
        await self.publish(report, self.prepare(report))

    async def publish(self, report: AgentReport, data: bytes) -> None:
        """Store a prepared report (`prepare`): `data` is what is sent, `report` names it in errors."""
        headers = {"Nats-Msg-Id": report.event_id, **self._auth}
        delay = 0.05
        while True:
            try:
                await self._js.publish(self._subject, data, timeout=self._timeout, headers=headers)
                return
            except nats.errors.MaxPayloadError as e:
                raise ReportLostError(f"report {report.WhichOneof('body')} too large: {e}") from e
            except Exception as e:
                if self._nc.is_closed:
                    raise ReportLostError(
                        f"report {report.WhichOneof('body')} for run {report.run_id or '-'} lost: "
                        "NATS connection closed"
                    ) from e
                log.warning(
                    "report not stored yet, retrying",
                    body=report.WhichOneof("body"),
                    run_id=report.run_id,
                    error=repr(e),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)

    async def registered(self, registered: AgentRegistered) -> None:
        await self.send(AgentReport(registered=registered))

    def for_attempt(self, run_id: str, attempt: int) -> AttemptReports:
        return AttemptReports(self, run_id, attempt)


class AttemptReports:
    """The reports of one attempt, published strictly one after another."""

    def __init__(self, reporter: Reporter, run_id: str, attempt: int) -> None:
        self._reporter = reporter
        self.run_id = run_id
        self.attempt = attempt
        self._lock = asyncio.Lock()

    async def _send(self, report: AgentReport) -> None:
        report.run_id = self.run_id
        async with self._lock:
            await self._reporter.send(report)

    async def staging(self) -> None:
        await self._send(AgentReport(staging=RunStaging(attempt=self.attempt)))

    async def started(self) -> None:
        await self._send(AgentReport(started=RunStarted(attempt=self.attempt)))

    async def uploading(self, exit_code: int) -> None:
        await self._send(AgentReport(uploading=RunUploading(attempt=self.attempt, exit_code=exit_code)))

    async def checkpointed(self, checkpoint: Checkpoint) -> None:
        """A checkpoint is stored whole (its manifest last): the next attempt may start from it."""
        await self._send(AgentReport(checkpointed=RunCheckpointed(attempt=self.attempt, checkpoint=checkpoint)))

    async def completed(self, results_uri: str) -> None:
        await self._send(AgentReport(completed=RunCompleted(attempt=self.attempt, results_uri=results_uri)))

    async def failed(self, reason: FailureReason.ValueType, message: str, exit_code: int = 0) -> None:
        # The message may quote the run's stderr or an exception about its files: storable, like its lines.
        failed = AttemptFailed(attempt=self.attempt, reason=reason, exit_code=exit_code, message=storable(message))
        await self._send(AgentReport(failed=failed))

    async def canceled(self, reason: str) -> None:
        await self._send(AgentReport(canceled=RunCanceled(attempt=self.attempt, reason=storable(reason))))

    # Output batches hold thousands of lines or points: they are copied into the report once,
    # in place, rather than into a body message and then again into the report. A batch sent
    # again after an agent restart carries the event id it was first sent with. A big batch
    # is copied and serialized in a worker thread: tens of milliseconds of Python that, on the
    # event loop, every other run's sends and reads would wait behind (a quiet run's line
    # behind eight chatty runs' batches).

    async def logged(self, lines: Sequence[LogLine], event_id: str = "") -> None:
        def build() -> AgentReport:
            report = AgentReport(event_id=event_id)
            report.logged.run_id, report.logged.attempt = self.run_id, self.attempt
            report.logged.lines.extend(lines)
            return report

        await self._send_built(build, len(lines))

    async def metrics(self, points: Sequence[MetricPoint], event_id: str = "") -> None:
        def build() -> AgentReport:
            report = AgentReport(event_id=event_id)
            report.metrics.run_id, report.metrics.attempt = self.run_id, self.attempt
            report.metrics.points.extend(points)
            return report

        await self._send_built(build, len(points))

    async def _send_built(self, build: Callable[[], AgentReport], items: int) -> None:
        def prepared() -> tuple[AgentReport, bytes]:
            report = build()
            report.run_id = self.run_id
            return report, self._reporter.prepare(report)

        async with self._lock:  # built inside the lock too: the attempt's reports keep their order
            if items > BUILD_ON_LOOP_ITEMS:
                report, data = await asyncio.to_thread(prepared)
            else:
                report, data = prepared()
            await self._reporter.publish(report, data)
