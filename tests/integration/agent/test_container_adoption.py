"""A container agent restarted in-process: adoption within its slots, and containers no record names.

Real NATS and the session's Podman with the python framework image; no control
plane (the reports are read straight from the stream, as the other agent tests do).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from runyard.agent.config import AgentConfig
from runyard.agent.engine import connect
from runyard.agent.runtime_container import LABEL_AGENT, LABEL_ATTEMPT, LABEL_RUN
from runyard.v1.agent_pb2 import AgentReport, WorkAssignment
from runyard.v1.common_pb2 import Framework, LogStream, RunSpec
from tests.integration.agent.container_harness import remove_agent_containers
from tests.integration.agent.harness import new_agent_id, running_agent, texts, transitions
from tests.support.services import NatsServer

pytestmark = pytest.mark.integration

PRINT = "python3 -c 'import time\nfor i in range({n}):\n    print(i, flush=True)\n    time.sleep(0.02)'"


@pytest.fixture
def client(container_engine: str, python_image: str) -> Iterator[docker.DockerClient]:
    c = connect(container_engine)
    yield c
    c.close()


@pytest.fixture
def config(
    tmp_path: Path, nats_server: NatsServer, container_engine: str, client: docker.DockerClient
) -> Iterator[AgentConfig]:
    cfg = AgentConfig(
        agent_id=new_agent_id(),
        nats_url=nats_server.url,
        work_dir=str(tmp_path / "work"),
        storage_root=(tmp_path / "objects").as_uri(),
        heartbeat_s=0.2,
        cancel_grace_s=2.0,
        slots=2,
        runtime="container",
        engine_url=container_engine,
    )
    yield cfg
    remove_agent_containers(client, cfg.agent_id)


def work(lines: int) -> WorkAssignment:
    spec = RunSpec(command=PRINT.format(n=lines), framework=Framework(name="python"))
    return WorkAssignment(run_id=f"run-{uuid.uuid4().hex[:8]}", attempt=1, experiment_id="exp-a", spec=spec)


def test_adopted_containers_beyond_the_slots_hold_new_work_back(config: AgentConfig) -> None:
    """Two containers adopted by an agent restarted with one slot: new work waits for both to end,
    and each adopted run's lines and end are reported exactly once across the two agent processes."""
    first, second, third = work(150), work(150), work(5)
    ends: list[str] = []

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            for w in (first, second):
                await agent.send_work(w)
            started = {first.run_id, second.run_id}
            while not started <= {r.run_id for r in agent.received if r.WhichOneof("body") == "started"}:
                await agent.next_report(timeout=60)
            await agent.stop_agent()  # graceful: the containers run on
            before = list(agent.received)
        async with running_agent(dataclasses.replace(config, slots=1)) as agent:
            await agent.send_work(third)
            got: list[AgentReport] = []
            while not {first.run_id, second.run_id, third.run_id} <= set(ends):
                report = await agent.next_report(timeout=60)
                got.append(report)
                if report.WhichOneof("body") in ("completed", "failed", "canceled"):
                    ends.append(report.run_id)
                if report.WhichOneof("body") == "started":
                    ends.append(f"started {report.run_id}")
            return before + got

    reports = asyncio.run(asyncio.wait_for(scenario(), 180))
    assert ends.index(f"started {third.run_id}") > max(ends.index(first.run_id), ends.index(second.run_id)), ends
    for w in (first, second):
        mine = [r for r in reports if r.run_id == w.run_id]
        assert transitions(mine) == ["staging", "started", "uploading", "completed"]
        assert texts(mine, LogStream.LOG_STREAM_STDOUT) == [str(i) for i in range(150)]


def test_a_container_no_record_names_is_removed_at_start(config: AgentConfig, client: docker.DockerClient) -> None:
    stray = client.containers.run(
        "localhost/runyard/python:3.11",
        ["sleep", "60"],
        detach=True,
        network_mode="none",
        labels={LABEL_AGENT: config.agent_id, LABEL_RUN: "run-stray", LABEL_ATTEMPT: "1"},
    )

    async def scenario() -> None:
        async with running_agent(config):
            pass

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert client.containers.list(all=True, filters={"id": str(stray.id)}) == []
