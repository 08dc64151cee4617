"""Runs in containers survive an agent restart (issue 8, item 6): kill -9 or SIGTERM, then the agent comes back.

Real processes (the server, the agent with ``--runtime container``), PostgreSQL,
a NATS of the test's own, the session's Podman service and the python framework
image. Four runs print numbered lines for a few seconds; the agent is stopped
while they print and started again. Every run completes in its first attempt
(no second container), and its log holds every numbered line exactly once.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from runyard.agent.engine import connect
from runyard.agent.runtime_container import LABEL_AGENT
from runyard.v1 import common_pb2, run_service_pb2
from tests.integration.agent.container_harness import remove_agent_containers
from tests.integration.scheduling.helpers import all_ended, manifest, submit, wait_until
from tests.support.services import NatsServer
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration
RS = common_pb2.RunState

LINES = 300
# ~6 s of numbered lines, flushed one by one (the agent is stopped in the middle of them).
TRAIN = (
    f"python3 -c 'import time\nfor i in range({LINES}):\n"
    '    print("line %d" % i, flush=True)\n    time.sleep(0.02)\''
)


@pytest.fixture
def stack(tmp_path: Path, pg_url: str, nats_server: NatsServer) -> Iterator[Stack]:
    s = Stack(
        root=tmp_path,
        database_url=pg_url,
        nats_url=nats_server.url,
        storage_root=(tmp_path / "objects").as_uri(),
        # A lease the restart fits in easily; the agent's heartbeats renew it once it is back.
        extra_env={"RUNYARD_ATTEMPT_LEASE": "30"},
    )
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def engine(container_engine: str, python_image: str) -> Iterator[docker.DockerClient]:
    client = connect(container_engine)
    yield client
    client.close()


def stdout_lines(stubs: Stubs, run_id: str) -> list[str]:
    lines: list[str] = []
    token = ""
    while True:
        page = stubs.runs.GetRunLogs(
            run_service_pb2.GetRunLogsRequest(run_id=run_id, page_size=1000, page_token=token), timeout=10
        )
        lines += [x.text for x in page.lines if x.stream == common_pb2.LogStream.LOG_STREAM_STDOUT]
        if not page.next_page_token:
            return lines
        token = page.next_page_token


@pytest.mark.parametrize(
    ("how", "back_after_they_end"),
    [(signal.SIGKILL, False), (signal.SIGTERM, False), (signal.SIGKILL, True)],
    ids=["kill-9", "graceful", "kill-9-back-after-they-ended"],
)
def test_container_runs_survive_an_agent_restart_exactly_once(
    stack: Stack, engine: docker.DockerClient, container_engine: str, how: signal.Signals, back_after_they_end: bool
) -> None:
    """Back after they ended: the runs exit while no agent watches (and the agent is declared lost meanwhile);
    the restarted agent reads their output to the end and reports each end, once."""
    agent_id = f"reattach-{uuid.uuid4().hex[:6]}"
    flags = ("--runtime", "container", "--engine-url", container_engine, "--cancel-grace", "2")
    stack.start_server(agent_timeout="4")
    try:
        with stack.channel() as channel:
            stubs = Stubs(channel)
            stack.start_agent(agent_id, 4, *flags)
            exp = submit(stubs, manifest("reattach", TRAIN, gpus=0, runs=4))

            def runs() -> list[run_service_pb2.Run]:  # type: ignore[name-defined]
                request = run_service_pb2.ListRunsRequest(experiment_id=exp.id)
                return list(stubs.runs.ListRuns(request, timeout=10).runs)

            def printing() -> bool:
                rs = runs()
                return len(rs) == 4 and all(
                    r.state == RS.RUN_STATE_RUNNING and len(stdout_lines(stubs, r.id)) >= 20 for r in rs
                )

            wait_until("4 runs printing in their containers", printing, timeout=120, stack=stack)
            ids_before = {c.id for c in engine.containers.list(filters={"label": f"{LABEL_AGENT}={agent_id}"})}
            assert len(ids_before) == 4
            stack.agents[-1].stop(how)
            # Graceful or not, the containers run on without their agent.
            still = {c.id for c in engine.containers.list(filters={"label": f"{LABEL_AGENT}={agent_id}"})}
            assert still == ids_before
            if back_after_they_end:

                def all_exited() -> bool:
                    found = engine.containers.list(all=True, filters={"label": f"{LABEL_AGENT}={agent_id}"})
                    return len(found) == 4 and all(c.status == "exited" for c in found)

                wait_until("the containers to exit without their agent", all_exited, timeout=60, stack=stack)
                assert all(r.state == RS.RUN_STATE_RUNNING for r in runs())  # nobody reported their end yet
            stack.start_agent(agent_id, 4, *flags)

            wait_until("the experiment to end", lambda: all_ended(stubs, [exp.id]), timeout=120, stack=stack)
            ended = runs()
            assert [RS.Name(r.state) for r in ended] == ["RUN_STATE_COMPLETED"] * 4, stack.logs()
            assert [r.attempt for r in ended] == [1] * 4, "each run ran once: no second attempt"
            for r in ended:
                assert stdout_lines(stubs, r.id) == [f"line {i}" for i in range(LINES)], r.id
            left = engine.containers.list(all=True, filters={"label": f"{LABEL_AGENT}={agent_id}"})
            assert not left, "every container is removed once its end is reported"
            assert "adopted a container of a previous agent process" in stack.agents[-1].output()
    finally:
        remove_agent_containers(engine, agent_id)


@pytest.fixture
def short_lease_stack(tmp_path: Path, pg_url: str, nats_server: NatsServer) -> Iterator[Stack]:
    s = Stack(
        root=tmp_path,
        database_url=pg_url,
        nats_url=nats_server.url,
        storage_root=(tmp_path / "objects").as_uri(),
        extra_env={"RUNYARD_ATTEMPT_LEASE": "6"},
    )
    try:
        yield s
    finally:
        s.stop()


def test_a_container_whose_attempt_the_control_plane_gave_up_on_is_stopped_not_adopted_for_good(
    short_lease_stack: Stack, engine: docker.DockerClient, container_engine: str
) -> None:
    """Away past the lease: the attempt was ended (AGENT_LOST) and re-queued. The restarted agent stops
    and removes the old attempt's container before it takes any work (it was unvouched for more than
    half its lease), and the run completes in its second attempt, never two containers of it at once
    (two slots: adopted, the first would run on beside the second)."""
    stack = short_lease_stack
    agent_id = f"reattach-{uuid.uuid4().hex[:6]}"
    flags = ("--runtime", "container", "--engine-url", container_engine, "--cancel-grace", "2")
    long_train = TRAIN.replace(f"range({LINES})", "range(750)")  # ~15 s
    stack.start_server(agent_timeout="3")
    try:
        with stack.channel() as channel:
            stubs = Stubs(channel)
            stack.start_agent(agent_id, 2, *flags)
            exp = submit(stubs, manifest("given-up", long_train, gpus=0, extra="max_restarts: 2\n"))

            def run() -> run_service_pb2.Run:  # type: ignore[name-defined]
                request = run_service_pb2.ListRunsRequest(experiment_id=exp.id)
                return stubs.runs.ListRuns(request, timeout=10).runs[0]

            wait_until("the run to print", lambda: len(stdout_lines(stubs, run().id)) >= 10, timeout=120, stack=stack)
            stack.agents[-1].stop(signal.SIGKILL)
            wait_until("the lease to end", lambda: run().state == RS.RUN_STATE_QUEUED, timeout=60, stack=stack)
            first = engine.containers.list(filters={"label": f"{LABEL_AGENT}={agent_id}"})
            assert len(first) == 1 and first[0].labels["org.runyard.attempt"] == "1"  # still running
            stack.start_agent(agent_id, 2, *flags)

            def containers() -> list[str]:
                # Sparse: no inspect per container, which fails for one the agent removes meanwhile.
                found = engine.containers.list(all=True, sparse=True, filters={"label": f"{LABEL_AGENT}={agent_id}"})
                return [c.attrs["Labels"]["org.runyard.attempt"] for c in found]

            seen: set[tuple[str, ...]] = set()

            def ended() -> bool:
                seen.add(tuple(sorted(containers())))
                return all_ended(stubs, [exp.id])

            wait_until("the experiment to end", ended, timeout=120, stack=stack)
            final = run()
            assert RS.Name(final.state) == "RUN_STATE_COMPLETED" and final.attempt == 2, stack.logs()
            assert all(len(s) <= 1 for s in seen), f"two containers of the run at once: {seen}"
            assert not containers()
            assert "stopped a container left unvouched too long" in stack.agents[-1].output()
    finally:
        remove_agent_containers(engine, agent_id)
