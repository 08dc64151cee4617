"""Framework versions and the run's own image, through the real API on PostgreSQL and SQLite.

A version no registered agent offers, or an `image:` with no container agent,
is refused at submit naming the field and what the agents offer (as a GPU model
nobody has is); with no agent registered nothing is refused and such runs wait
saying why once agents come. A registered container agent's runtime and image
digests are what ListAgents shows.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest

from runyard import bus
from runyard.v1 import admin_service_pb2, agent_pb2, common_pb2, events_pb2, resources_pb2, run_service_pb2
from tests.integration.api.helpers import RS, code_of, details, wait_state
from tests.integration.scheduling.helpers import manifest, submit, wait_until
from tests.support.services import NatsServer
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "ab" * 32
IMAGE = "localhost/team/train:1"


@pytest.fixture(params=["postgresql", "sqlite"])
def stack(request: pytest.FixtureRequest, tmp_path: Path, nats_server: NatsServer) -> Iterator[Stack]:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else f"sqlite:///{tmp_path}/runyard.db"
    s = Stack(root=tmp_path, database_url=url, nats_url=nats_server.url, storage_root=(tmp_path / "objects").as_uri())
    try:
        yield s
    finally:
        s.stop()


def job(name: str, framework: str, extra: str = "") -> str:
    """A CPU-only one-run manifest with this framework line."""
    return manifest(name, "true", gpus=0, extra=extra).replace("framework: {name: python}", f"framework: {framework}")


def agents_by_id(stubs: Stubs) -> dict[str, resources_pb2.Agent]:
    return {a.id: a for a in stubs.admin.ListAgents(admin_service_pb2.ListAgentsRequest(), timeout=10).agents}


def waiting_reason(stubs: Stubs, run_id: str) -> str:
    return stubs.runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_id), timeout=10).run.waiting_reason


def register_container_agent(stack: Stack, agent_id: str) -> None:
    """What a container agent registers: its framework images with their digests, and runtime "container"."""
    registered = events_pb2.AgentRegistered(
        agent_id=agent_id,
        hostname="gpu-host",
        slots=2,
        frameworks=[
            common_pb2.Framework(name="pytorch", version="2.13", digest=DIGEST),
            common_pb2.Framework(name="python", version="3.11", digest="sha256:" + "cd" * 32),
        ],
        runtime="container",
    )
    report = agent_pb2.AgentReport(event_id=str(uuid.uuid4()), agent_id=agent_id, registered=registered)

    async def publish() -> None:
        nc = await nats.connect(stack.nats_url)
        try:
            headers = {"Authorization": f"Bearer {stack.key_for(agent_id)}"}
            await nc.jetstream().publish(bus.reports_subject(agent_id), report.SerializeToString(), headers=headers)
        finally:
            await nc.close()

    asyncio.run(publish())


def refused(stubs: Stubs, manifest_yaml: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        submit(stubs, manifest_yaml)
    return err.value


def test_unoffered_versions_and_images_are_refused_at_submit_and_offered_ones_run(stack: Stack) -> None:
    # Agents that never heartbeat (the registered container agent below) stay registered for the whole test.
    stack.start_server(agent_timeout="600")
    with stack.channel() as channel:
        stubs = Stubs(channel)
        # No agent yet: nothing is refused (agents may still be starting); the runs wait.
        early_version = submit(stubs, job("early-version", '{name: pytorch, version: "2.99"}')).runs[0].id
        early_image = submit(stubs, job("early-image", "{name: pytorch}", f"image: {IMAGE}\n")).runs[0].id
        assert waiting_reason(stubs, early_version) == "no agent is connected"

        python = sys.executable
        stack.start_agent("proc-1", 2, "--framework", f"pytorch@2.13={python}", "--framework", f"python={python}")
        proc = wait_until("the process agent to register", lambda: agents_by_id(stubs).get("proc-1"), stack=stack)
        assert proc.runtime == "process"
        assert [(f.name, f.version, f.digest) for f in proc.frameworks] == [("python", "", ""), ("pytorch", "2.13", "")]

        # A version nobody offers: INVALID_ARGUMENT naming the field, the version, and what agents offer.
        err = refused(stubs, job("v299", '{name: pytorch, version: "2.99"}'))
        assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT
        assert details(err) == (
            "framework.version: no agent offers framework pytorch 2.99 (agents offer: pytorch 2.13, python)"
        )
        # The run's own image and no container agent: refused naming `image`.
        err = refused(stubs, job("own-image", "{name: pytorch}", f"image: {IMAGE}\n"))
        assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT
        assert details(err).startswith("image:") and IMAGE in details(err) and "container" in details(err)

        # The runs queued before any agent came now say why they wait.
        wait_until(
            "the early runs to say why they wait",
            lambda: (
                waiting_reason(stubs, early_version).startswith("framework.version: no agent offers framework")
                and waiting_reason(stubs, early_image).startswith("image:")
            ),
            stack=stack,
        )

        # What the agent offers runs there: version 2.13 (and a patch-level ask), and any version.
        offered = [
            submit(stubs, job(name, framework)).runs[0].id
            for name, framework in (
                ("v213", '{name: pytorch, version: "2.13"}'),
                ("any", "{name: pytorch}"),
                ("py", "{name: python}"),
            )
        ]
        for run_id in offered:
            done = wait_state(stubs, run_id, {RS.RUN_STATE_COMPLETED, RS.RUN_STATE_FAILED}).run
            assert (done.state, done.agent_id) == (RS.RUN_STATE_COMPLETED, "proc-1"), done

        # A container agent registers its framework images: ListAgents shows its runtime and digests.
        register_container_agent(stack, "ctr-1")
        ctr = wait_until("the container agent to register", lambda: agents_by_id(stubs).get("ctr-1"), stack=stack)
        assert ctr.runtime == "container"
        assert [(f.name, f.version, f.digest) for f in ctr.frameworks] == [
            ("pytorch", "2.13", DIGEST),
            ("python", "3.11", "sha256:" + "cd" * 32),
        ]
        # Now an image is accepted, and a version only the container agent has too.
        submit(stubs, job("own-image", "{name: pytorch}", f"image: {IMAGE}\n"))
        submit(stubs, job("py311", '{name: python, version: "3.11"}'))
        err = refused(stubs, job("v299", '{name: pytorch, version: "2.99"}'))
        assert "pytorch 2.13" in details(err) and "python 3.11" in details(err)
