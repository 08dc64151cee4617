"""The agent as its own process: SIGTERM ends it gracefully; a missing NATS does not wedge a stop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from runyard import bus
from runyard.agent.config import AgentConfig
from runyard.agent.main import run_agent
from runyard.v1.agent_pb2 import AgentReport
from tests.integration.agent.harness import new_agent_id
from tests.support.services import NatsServer, free_port

pytestmark = pytest.mark.integration


def test_sigterm_stops_an_agent_started_without_a_stop_event(tmp_path: Path, nats_server: NatsServer) -> None:
    agent_id = new_agent_id()
    script = textwrap.dedent(
        f"""
        import asyncio
        from runyard.agent.config import AgentConfig
        from runyard.agent.main import run_agent
        asyncio.run(run_agent(AgentConfig(agent_id={agent_id!r}, nats_url={nats_server.url!r},
                                          work_dir={str(tmp_path / "work")!r})))
        """
    )

    async def scenario() -> int:
        # The test reads the reports; the agent under test is the subprocess.
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await bus.ensure_streams(js)
        sub = await js.pull_subscribe(
            bus.reports_subject(agent_id),
            stream=bus.REPORTS_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
        )
        proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
        try:
            msg = (await sub.fetch(1, timeout=20))[0]
            assert AgentReport.FromString(msg.data).WhichOneof("body") == "registered"
            proc.send_signal(signal.SIGTERM)
            return await asyncio.to_thread(proc.wait, 15)
        finally:
            if proc.poll() is None:
                proc.kill()
            await nc.close()

    assert asyncio.run(scenario()) == 0


def test_stop_while_nats_is_unreachable_returns(tmp_path: Path) -> None:
    config = AgentConfig(
        agent_id=new_agent_id(), nats_url=f"nats://127.0.0.1:{free_port()}", work_dir=str(tmp_path / "work")
    )

    async def scenario() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(run_agent(config, stop))
        await asyncio.sleep(0.5)  # the agent keeps trying to connect meanwhile
        assert not task.done()
        t0 = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        return time.monotonic() - t0

    assert asyncio.run(scenario()) < 2.0
