"""Agent keys on a live stack: a key speaks for one agent, of one account, about its own runs.

The NATS here has no users (as an operator's might not): these are the control
plane's own checks, which hold whatever NATS lets through. Reports and
heartbeats are forged with a plain NATS client, as an intruder would.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
import pytest

from runyard import bus
from runyard.v1 import admin_service_pb2 as A
from runyard.v1 import agent_pb2, common_pb2, events_pb2
from runyard.v1 import run_service_pb2 as R
from tests.integration.api.helpers import RS, code_of, create, details, manifest, wait_state
from tests.support.services import NatsServer, postgres_database, wait_until
from tests.support.stack import Stack, Stubs

SLEEPER = 'python -c "import time; time.sleep(120)"'


@dataclass
class World:
    stack: Stack
    admin: Stubs


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("agent-keys")
    with postgres_database() as url:
        nats_server = NatsServer(root / "nats").start()
        stack = Stack(root=root, database_url=url, nats_url=nats_server.url, storage_root=(root / "objects").as_uri())
        try:
            stack.start_server()
            stack.start_agent("agent-1", 2)
            with stack.channel() as channel:
                yield World(stack, Stubs(channel))
        except BaseException:
            print(stack.logs())
            raise
        finally:
            stack.stop()
            nats_server.stop()


async def _send(url: str, subject: str, data: bytes, key: str | None, jetstream: bool = True) -> None:
    nc = await nats.connect(url)
    headers = {"Authorization": f"Bearer {key}"} if key else None
    try:
        if jetstream:
            await nc.jetstream().publish(subject, data, headers=headers)
        else:
            await nc.publish(subject, data, headers=headers)
            await nc.flush()
    finally:
        await nc.close()


def report(world: World, report: agent_pb2.AgentReport, key: str | None, subject: str = "") -> None:
    report.event_id = report.event_id or str(uuid.uuid4())
    subject = subject or bus.reports_subject(report.agent_id)
    asyncio.run(_send(world.stack.nats_url, subject, report.SerializeToString(), key))


def heartbeat(world: World, agent_id: str, key: str | None, subject: str = "") -> None:
    beat = agent_pb2.AgentHeartbeat(agent_id=agent_id, time_us=time.time_ns() // 1000)
    subject = subject or bus.heartbeat_subject(agent_id)
    asyncio.run(_send(world.stack.nats_url, subject, beat.SerializeToString(), key, jetstream=False))


def registration(agent_id: str, gpus: int = 8) -> agent_pb2.AgentReport:
    ids = [f"GPU-{agent_id}-{i}" for i in range(gpus)]
    devices = [common_pb2.GpuDevice(index=i, uuid=u, model="H100", memory_bytes=80 << 30) for i, u in enumerate(ids)]
    registered = events_pb2.AgentRegistered(
        agent_id=agent_id,
        hostname="evil",
        slots=gpus,
        gpu_ids=ids,
        gpus=devices,
        labels={"gpu_model": "H100"},
        frameworks=[common_pb2.Framework(name="python")],
    )
    return agent_pb2.AgentReport(agent_id=agent_id, registered=registered)


def agents(world: World) -> dict[str, bool]:
    return {a.id: a.alive for a in world.admin.admin.ListAgents(A.ListAgentsRequest(), timeout=10).agents}


def log_report(run_id: str, text: str, agent_id: str = "agent-1") -> agent_pb2.AgentReport:
    line = common_pb2.LogLine(stream=common_pb2.LOG_STREAM_STDOUT, text=text)
    return agent_pb2.AgentReport(
        agent_id=agent_id, run_id=run_id, logged=events_pb2.RunLogged(run_id=run_id, attempt=1, lines=[line])
    )


def metrics_report(run_id: str, body_run_id: str, name: str) -> agent_pb2.AgentReport:
    point = common_pb2.MetricPoint(name=name, step=1, value=99.0, source="jsonl")
    return agent_pb2.AgentReport(
        agent_id="agent-1",
        run_id=run_id,
        metrics=events_pb2.RunMetricsReported(run_id=body_run_id, attempt=1, points=[point]),
    )


def log_texts(world: World, run_id: str) -> list[str]:
    return [ln.text for ln in world.admin.runs.GetRunLogs(R.GetRunLogsRequest(run_id=run_id), timeout=10).lines]


def metric_names(world: World, run_id: str) -> set[str]:
    points = world.admin.runs.GetRunMetrics(R.GetRunMetricsRequest(run_id=run_id), timeout=10).points
    return {p.name for p in points}


def test_the_bootstrap_agent_key_speaks_only_for_its_own_agent(world: World) -> None:
    """It used to name no agent and so spoke for every one: registered any, reported for any."""
    stack = world.stack
    run_id = create(world.admin, manifest(SLEEPER, name="held")).experiment.runs[0].id
    assert wait_state(world.admin, run_id, {RS.RUN_STATE_RUNNING}).run.agent_id == "agent-1"

    report(world, registration("impostor"), stack.agent_key)
    for _ in range(3):
        heartbeat(world, "impostor", stack.agent_key)
    # Speaking as another agent about agent-1's run, on that agent's subject and on agent-1's.
    report(world, log_report(run_id, "as impostor", agent_id="impostor"), stack.agent_key)
    report(world, log_report(run_id, "as impostor on agent-1's subject", agent_id="impostor"), stack.agent_key,
           bus.reports_subject("agent-1"))  # fmt: skip
    # A key bound to another agent, reporting as agent-1.
    report(world, log_report(run_id, "with agent-2's key"), stack.key_for("agent-2"))
    report(world, log_report(run_id, "marker"), stack.agent_key)

    texts = wait_until(lambda: (t := log_texts(world, run_id)) and "marker" in t and t, 30, "marker never stored")
    assert not [t for t in texts if "impostor" in t or "agent-2" in t], texts
    assert "impostor" not in agents(world)
    world.admin.runs.CancelRun(R.CancelRunRequest(run_id=run_id), timeout=10)
    wait_state(world.admin, run_id, {RS.RUN_STATE_CANCELED})


def test_heartbeats_count_only_with_a_key_bound_to_that_agent(world: World) -> None:
    """Anonymous heartbeats made a fake 8-GPU agent alive, and another's run was placed on it."""
    stack = world.stack
    fake_key = stack.key_for("fake-8gpu")
    report(world, registration("fake-8gpu"), fake_key)
    wait_until(lambda: "fake-8gpu" in agents(world), 30, "the registration with its own key was not stored")
    big = manifest(SLEEPER, name="big", extra="resources: {gpus: 8}\n")
    run_id = create(world.admin, big).experiment.runs[0].id
    forged = [
        (None, ""),  # no key at all
        (stack.agent_key, ""),  # agent-1's key
        (fake_key, bus.heartbeat_subject("agent-1")),  # its own key, on another agent's subject
    ]
    deadline = time.monotonic() + 4  # two heartbeat periods of forgeries, and scheduling cycles
    while time.monotonic() < deadline:
        for key, subject in forged:
            heartbeat(world, "fake-8gpu", key, subject)
        time.sleep(0.3)
        run = world.admin.runs.GetRun(R.GetRunRequest(run_id=run_id), timeout=10).run
        assert run.state == RS.RUN_STATE_QUEUED, f"placed on {run.agent_id} after forged heartbeats"
    # The control: with its own key on its own subject, the agent is alive and gets the run.
    heartbeat(world, "fake-8gpu", fake_key)
    placed = wait_state(world.admin, run_id, {RS.RUN_STATE_ASSIGNED}, timeout=15).run
    assert placed.agent_id == "fake-8gpu"
    world.admin.runs.CancelRun(R.CancelRunRequest(run_id=run_id), timeout=10)
    world.admin.admin.DrainAgent(A.DrainAgentRequest(agent_id="fake-8gpu"), timeout=10)  # no more runs for it


def test_a_metrics_report_naming_another_run_adds_nothing_to_it(world: World) -> None:
    grid = "hyperparameters: {x: {type: categorical, values: [1, 2]}}\nsearch: {method: grid}\n"
    body = manifest(SLEEPER, name="pair", extra=grid)
    runs = [r.id for r in create(world.admin, body).experiment.runs]
    for run_id in runs:
        wait_state(world.admin, run_id, {RS.RUN_STATE_RUNNING})
    mine, other = runs
    report(world, metrics_report(mine, other, "stolen"), world.stack.agent_key)
    report(world, metrics_report(mine, mine, "marker"), world.stack.agent_key)
    wait_until(lambda: "marker" in metric_names(world, mine), 30, "the marker metric was never stored")
    assert "stolen" not in metric_names(world, other)
    assert "stolen" not in metric_names(world, mine)
    for run_id in runs:
        world.admin.runs.CancelRun(R.CancelRunRequest(run_id=run_id), timeout=10)
        wait_state(world.admin, run_id, {RS.RUN_STATE_CANCELED})


def test_an_agent_key_names_one_agent_of_one_account(world: World) -> None:
    admin = world.admin.admin
    admin.CreateAccount(A.CreateAccountRequest(account_id="tenant-x", gpu_quota=1), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        admin.CreateApiKey(A.CreateApiKeyRequest(account_id="tenant-x", role=common_pb2.ROLE_AGENT), timeout=10)
    assert code_of(err.value) == grpc.StatusCode.INVALID_ARGUMENT and "agent_id" in details(err.value)
    # agent-1 runs with keys of account default: a key of another account may not speak for it.
    with pytest.raises(grpc.RpcError) as err:
        admin.CreateApiKey(
            A.CreateApiKeyRequest(account_id="tenant-x", role=common_pb2.ROLE_AGENT, agent_id="agent-1"), timeout=10
        )
    assert code_of(err.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "agent-1" in details(err.value) and "default" in details(err.value)
    # A fresh agent id is fine for that account.
    made = admin.CreateApiKey(
        A.CreateApiKeyRequest(account_id="tenant-x", role=common_pb2.ROLE_AGENT, agent_id="x-node-1"), timeout=10
    )
    assert made.key.agent_id == "x-node-1" and made.key.account_id == "tenant-x"
