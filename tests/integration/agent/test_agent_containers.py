"""The whole agent with `--runtime container` on a real NATS and a real Podman."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from runyard.agent.config import AgentConfig
from runyard.agent.engine import connect
from runyard.agent.gpus import declared_gpus
from runyard.agent.runtime_container import LABEL_AGENT
from runyard.objectstore import open_store
from runyard.v1.agent_pb2 import AgentReport, WorkAssignment
from runyard.v1.common_pb2 import FailureReason, Framework, LogStream, MetricPattern, Resources, RunSpec
from runyard.v1.events_pb2 import AgentRegistered
from tests.integration.agent.container_harness import (
    PYTHON,
    remove_agent_containers,
)
from tests.integration.agent.harness import (
    code_tar,
    kinds,
    metric_points,
    new_agent_id,
    running_agent,
    texts,
    transitions,
)
from tests.support.services import NatsServer

pytestmark = pytest.mark.integration

MiB = 1 << 20

TRAIN_PY = """\
import json, os, sys
print("hello from", os.environ["RUNYARD_RUN_ID"], os.getuid())
print("step 1 loss=0.5")
print("careful", file=sys.stderr)
with open(os.path.join(os.environ["DATA_DIR"], "numbers.txt")) as f:
    print("data says", f.read().strip())
with open(os.environ["RUNYARD_METRICS_FILE"], "a") as f:
    f.write(json.dumps({"step": 1, "acc": 0.75}) + "\\n")
with open(os.path.join(os.environ["RESULT_DIR"], "model.txt"), "w") as f:
    f.write("weights")
"""


@pytest.fixture(scope="module")
def client(container_engine: str) -> Iterator[docker.DockerClient]:
    c = connect(container_engine)
    yield c
    c.close()


@pytest.fixture(scope="module")
def framework(python_image: str) -> tuple[str, str]:
    return PYTHON


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
        runtime="container",
        engine_url=container_engine,
    )
    yield cfg
    remove_agent_containers(client, cfg.agent_id)


def work(command: str, framework: tuple[str, str], memory_bytes: int = 0) -> WorkAssignment:
    spec = RunSpec(
        command=command,
        framework=Framework(name=framework[0], version=framework[1]),
        resources=Resources(memory_bytes=memory_bytes),
        metric_patterns=[MetricPattern(regex=r"step (?P<step>\d+) loss=(?P<loss>[0-9.]+)")],
    )
    return WorkAssignment(run_id=f"run-{uuid.uuid4().hex[:8]}", attempt=1, experiment_id="exp-c", spec=spec)


def test_a_run_in_a_container_completes_with_its_output(
    config: AgentConfig, framework: tuple[str, str], client: docker.DockerClient, tmp_path: Path
) -> None:
    store = open_store(config.storage_root, None)
    tag = uuid.uuid4().hex[:8]
    store.put_bytes(f"s3://code/{tag}.tar.gz", code_tar({"train.py": TRAIN_PY}))
    store.put_bytes(f"s3://datasets/{tag}/numbers.txt", b"1 2 3\n")
    assignment = work("python3 train.py", framework)
    assignment.spec.code_uri = f"s3://code/{tag}.tar.gz"
    assignment.spec.data_uri = f"s3://datasets/{tag}"
    assignment.spec.results_uri = f"s3://results/{tag}"

    async def scenario() -> tuple[AgentRegistered, list[AgentReport]]:
        async with running_agent(config) as agent:
            registered = agent.received[0].registered
            await agent.send_work(assignment)
            reports = await agent.until_terminal(assignment.run_id)
        return registered, reports

    registered, reports = asyncio.run(scenario())
    assert registered.runtime == "container"
    held = {(f.name, f.version): f.digest for f in registered.frameworks}
    assert held[framework].startswith("sha256:")
    assert transitions(reports) == ["staging", "started", "uploading", "completed"], kinds(reports)
    stdout = texts(reports, LogStream.LOG_STREAM_STDOUT)
    assert stdout == [f"hello from {assignment.run_id} 65534", "step 1 loss=0.5", "data says 1 2 3"]
    assert texts(reports, LogStream.LOG_STREAM_STDERR) == ["careful"]
    points = {(p.name, p.step): p.value for p in metric_points(reports)}
    assert points == {("loss", 1): 0.5, ("acc", 1): 0.75}
    assert (tmp_path / "objects" / "results" / tag / "model.txt").read_text() == "weights"
    # The container went with the attempt.
    assert client.containers.list(all=True, filters={"label": f"{LABEL_AGENT}={config.agent_id}"}) == []


def test_memory_past_resources_memory_ends_out_of_memory(config: AgentConfig, framework: tuple[str, str]) -> None:
    assignment = work("python3 -c 'b = bytearray(700 * 2**20)'", framework, memory_bytes=256 * MiB)

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            await agent.send_work(assignment)
            return await agent.until_terminal(assignment.run_id, timeout=60)

    reports = asyncio.run(scenario())
    failed = reports[-1].failed
    assert failed.reason == FailureReason.FAILURE_REASON_OUT_OF_MEMORY, failed
    assert "used more than resources.memory 256 MiB" in failed.message
    assert failed.exit_code == 137


def test_cancel_stops_the_container_within_the_grace(config: AgentConfig, framework: tuple[str, str]) -> None:
    assignment = work("trap '' TERM; echo started; sleep 120", framework)

    async def scenario() -> tuple[list[AgentReport], float]:
        async with running_agent(config) as agent:
            await agent.send_work(assignment)
            got = await agent.wait_for(assignment.run_id, "started", timeout=30)
            deadline = time.monotonic() + 10
            while "started" not in texts(got, LogStream.LOG_STREAM_STDOUT):
                assert time.monotonic() < deadline, kinds(got)
                got += [r for r in [await agent.next_report(5)] if r.run_id == assignment.run_id]
            t0 = time.monotonic()
            await agent.cancel(assignment.run_id, 1, grace_seconds=1)
            reports = await agent.until_terminal(assignment.run_id, timeout=30)
            return reports, time.monotonic() - t0

    reports, took = asyncio.run(scenario())
    assert transitions(reports)[-1] == "canceled"
    assert took < 5.0, took


def test_metrics_file_is_read_through_no_link(config: AgentConfig, framework: tuple[str, str]) -> None:
    """A run that swaps its output files for links to host files gets nothing of those files into its log."""
    secret = Path(config.work_dir).parent / "host-secret.txt"
    secret.write_text(json.dumps({"step": 1, "stolen": 42.0}) + "\nTOP SECRET\n")
    command = (
        f"rm -f /runyard/output/stdout /runyard/output/metrics.jsonl; "
        f"ln -s {secret} /runyard/output/stdout; ln -s {secret} /runyard/output/metrics.jsonl; sleep 0.5"
    )
    assignment = work(command, framework)

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            await agent.send_work(assignment)
            return await agent.until_terminal(assignment.run_id, timeout=30)

    reports = asyncio.run(scenario())
    assert not any("SECRET" in t for t in texts(reports, LogStream.LOG_STREAM_STDOUT))
    assert all(p.name != "stolen" for p in metric_points(reports))


def test_declared_gpus_reach_the_run_by_uuid_without_a_device(config: AgentConfig, framework: tuple[str, str]) -> None:
    """`--gpus 1xH100` (tests, development): the run gets its GPU's UUID, the engine no device request."""
    gpus = tuple(declared_gpus("1xH100", config.agent_id))
    config = dataclasses.replace(config, gpus=gpus)
    assignment = work('echo "gpus=$CUDA_VISIBLE_DEVICES"', framework)
    assignment.gpu_ids.append(gpus[0].uuid)

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            await agent.send_work(assignment)
            return await agent.until_terminal(assignment.run_id, timeout=30)

    reports = asyncio.run(scenario())
    assert transitions(reports)[-1] == "completed", reports[-1]
    assert texts(reports, LogStream.LOG_STREAM_STDOUT) == [f"gpus={gpus[0].uuid}"]


def test_a_container_run_checkpoints_and_its_next_attempt_resumes_from_it(
    config: AgentConfig, framework: tuple[str, str]
) -> None:
    from tests.integration.agent.test_agent_checkpoints import CKPT_PY, checkpoints

    store = open_store(config.storage_root, None)
    tag = uuid.uuid4().hex[:8]
    store.put_bytes(f"s3://code/{tag}.tar.gz", code_tar({"ckpt.py": CKPT_PY}))
    first = work("python3 ckpt.py once", framework)
    first.spec.code_uri = f"s3://code/{tag}.tar.gz"
    first.spec.results_uri = f"s3://results/{tag}"
    second = WorkAssignment()
    second.CopyFrom(first)
    second.attempt = 2
    second.spec.command = "python3 ckpt.py resume"

    async def scenario() -> tuple[list[AgentReport], list[AgentReport]]:
        async with running_agent(config) as agent:
            await agent.send_work(first)
            ended = await agent.until_terminal(first.run_id, timeout=60)
            [ck] = checkpoints(ended)
            second.resume_from.CopyFrom(ck)
            await agent.send_work(second)
            return ended, await agent.until_terminal(second.run_id, timeout=60)

    ended, resumed = asyncio.run(scenario())
    assert transitions(ended)[-2:] == ["checkpointed", "completed"], kinds(ended)
    [ck] = checkpoints(ended)
    assert (ck.checkpoint_id, ck.files, ck.step) == ("1-1", 2, 3)
    assert transitions(resumed) == ["staging", "started", "uploading", "completed"], kinds(resumed)
    stdout = texts(resumed, LogStream.LOG_STREAM_STDOUT)
    assert stdout == [
        "env 2 1 3 /runyard/checkpoint",
        'restored state.json {"step": 3}',
        "restored sub/model.bin weights-3",
    ], stdout
