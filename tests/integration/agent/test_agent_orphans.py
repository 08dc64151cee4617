"""A restarted agent ends what a killed one left running, reports it, and only then registers and takes work.

Real processes and a real NATS; the "previous agent" is simulated by its records under WORK/.attempts/.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from runyard import bus
from runyard.agent.config import AgentConfig
from runyard.agent.holdings import HeldAttempt, Holdings, start_ticks
from runyard.agent.main import run_agent
from runyard.config import pid_alive
from runyard.v1.agent_pb2 import AgentReport
from runyard.v1.common_pb2 import FailureReason
from tests.integration.agent.harness import new_agent_id
from tests.support.services import NatsServer, wait_until

pytestmark = pytest.mark.integration


def orphan_group() -> subprocess.Popen[bytes]:
    """A run's command as the agent starts it: a shell in its own session, with a child."""
    return subprocess.Popen(["/bin/sh", "-c", "sleep 60 & sleep 60; wait"], start_new_session=True)


def test_a_restarted_agent_ends_and_reports_its_orphans_before_it_registers(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config = AgentConfig(
        agent_id=new_agent_id(), nats_url=nats_server.url, work_dir=str(tmp_path / "work"), cancel_grace_s=1.0
    )
    holdings = Holdings(Path(config.work_dir).resolve())
    orphan = orphan_group()
    stranger = orphan_group()  # its record says another start time: the pid was reused, never signalled
    try:
        holdings.record(HeldAttempt("run-orphan", 3, orphan.pid, start_ticks(orphan.pid) or 0))
        holdings.record(HeldAttempt("run-reused", 1, stranger.pid, (start_ticks(stranger.pid) or 0) + 1))
        holdings.record(HeldAttempt("run-staging", 2))  # the old agent died before its command started

        async def scenario() -> list[AgentReport]:
            nc = await nats.connect(nats_server.url)
            js = nc.jetstream()
            await bus.ensure_streams(js)
            sub = await js.pull_subscribe(
                bus.reports_subject(config.agent_id),
                stream=bus.REPORTS_STREAM,
                config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
            )
            stop = asyncio.Event()
            task = asyncio.create_task(run_agent(config, stop))
            reports: list[AgentReport] = []
            try:
                while not reports or reports[-1].WhichOneof("body") != "registered":
                    msg = (await sub.fetch(1, timeout=20))[0]
                    await msg.ack()
                    reports.append(AgentReport.FromString(msg.data))
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
                await nc.close()
            return reports

        reports = asyncio.run(scenario())
        failed = {(r.run_id, r.failed.attempt): r.failed for r in reports if r.WhichOneof("body") == "failed"}
        assert [r.WhichOneof("body") for r in reports][-1] == "registered"
        assert set(failed) == {("run-orphan", 3), ("run-reused", 1), ("run-staging", 2)}, "each reported before"
        assert all(f.reason == FailureReason.FAILURE_REASON_INTERNAL for f in failed.values())
        wait_until(lambda: not pid_alive(orphan.pid), 5, "the orphan's group was not ended")
        assert stranger.poll() is None and pid_alive(stranger.pid), "a reused pid was signalled"
        assert holdings.load() == [], "the records are gone once their end is reported"
    finally:
        for proc in (orphan, stranger):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
