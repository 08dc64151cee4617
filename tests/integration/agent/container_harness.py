"""Drive the container runtime directly: one attempt's container from a spec, its output and its end.

No NATS and no control plane: `run_in_container` stages nothing but the folders
(and code files, when given), starts the container exactly as the agent's
worker does (`ContainerRuntime.start`) and waits for it. The sandbox tests and
the hostile-script tests use it; the whole-agent tests use the NATS harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from runyard.agent.engine import connect
from runyard.agent.runtime_container import (
    LABEL_AGENT,
    ContainerExit,
    ContainerProcess,
    ContainerRuntime,
    Sandbox,
)
from runyard.agent.staging import RunDirs
from runyard.v1.agent_pb2 import WorkAssignment
from runyard.v1.common_pb2 import Framework, Resources, RunNetwork, RunSpec

#: The framework the sandbox tests run in: tests/containers.py's `python_image`.
PYTHON = ("python", "3.11")


@dataclass
class Ran:
    """One attempt's container, ended."""

    exit: ContainerExit
    stdout: str
    stderr: str
    dirs: RunDirs
    seconds: float


def spec_work(
    command: str,
    *,
    image: str = "",
    framework: str = PYTHON[0],
    version: str = PYTHON[1],
    memory_bytes: int = 0,
    cpus: int = 0,
    network: RunNetwork.ValueType = RunNetwork.RUN_NETWORK_UNSPECIFIED,
    env: Mapping[str, str] | None = None,
    gpu_ids: tuple[str, ...] = (),
) -> WorkAssignment:
    spec = RunSpec(
        command=command,
        image=image,
        framework=Framework(name=framework, version=version),
        resources=Resources(memory_bytes=memory_bytes, cpus=cpus),
        network=network,
        env=dict(env or {}),
    )
    return WorkAssignment(
        run_id=f"run-{uuid.uuid4().hex[:8]}", attempt=1, experiment_id="exp-c", spec=spec, gpu_ids=list(gpu_ids)
    )


async def start_in_container(
    runtime: ContainerRuntime, work_root: Path, work: WorkAssignment, code: Mapping[str, str] | None = None
) -> tuple[ContainerProcess, RunDirs]:
    dirs = RunDirs.under(work_root, work.run_id, work.attempt)
    dirs.create()
    for name, text in (code or {}).items():
        (dirs.code / name).write_text(text)
    return await runtime.start(work, dirs), dirs


async def run_in_container(
    runtime: ContainerRuntime,
    work_root: Path,
    work: WorkAssignment,
    code: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
) -> Ran:
    """Run one attempt's container to its end; the container is removed, its folder kept."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    proc, dirs = await start_in_container(runtime, work_root, work, code)
    try:
        ended = await asyncio.wait_for(proc.wait(), timeout_s)
    finally:
        await asyncio.to_thread(proc.remove)
    return Ran(
        ended,
        proc.stdout_path.read_text(errors="replace"),
        proc.stderr_path.read_text(errors="replace"),
        dirs,
        loop.time() - started,
    )


def custom_image(
    client: docker.DockerClient, base: str, repository: str, marker: str, changes: tuple[str, ...] = ()
) -> str:
    """An image of the user's own: base plus a file /runyard-custom holding marker (and Dockerfile `changes`)."""
    container = client.containers.run(
        base, ["/bin/sh", "-c", f"echo {marker} > /runyard-custom"], detach=True, network_mode="none", user="0:0"
    )
    try:
        status = container.wait(timeout=60)
        assert status["StatusCode"] == 0, container.logs()
        container.commit(repository=repository, tag="1", changes=list(changes))
    finally:
        container.remove(force=True)
    return f"{repository}:1"


def remove_image(client: docker.DockerClient, reference: str) -> None:
    with contextlib.suppress(docker.errors.ImageNotFound, docker.errors.APIError):
        client.images.remove(reference, force=True)


def remove_agent_containers(client: docker.DockerClient, agent_id: str) -> None:
    for c in client.containers.list(all=True, filters={"label": f"{LABEL_AGENT}={agent_id}"}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            c.remove(force=True)


def new_runtime(
    url: str, work_root: Path, agent_id: str | None = None, sandbox: Sandbox | None = None
) -> ContainerRuntime:
    return ContainerRuntime(connect(url), agent_id or f"c-{uuid.uuid4().hex[:8]}", work_root, sandbox)
