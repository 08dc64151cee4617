"""The container runtime on a real Podman: each sandbox fact asserted from inside a run's container."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from runyard.agent.engine import connect
from runyard.agent.runtime_container import ContainerError, ContainerRuntime, Sandbox
from runyard.v1.common_pb2 import RunNetwork
from tests.integration.agent.container_harness import (
    PYTHON,
    custom_image,
    new_runtime,
    remove_agent_containers,
    remove_image,
    run_in_container,
    spec_work,
    start_in_container,
)
from tests.support.services import NatsServer

pytestmark = pytest.mark.integration

MiB = 1 << 20

# Runs in the container: each fact the sandbox promises, as the run sees it, printed as JSON.
FACTS_PY = r"""
import errno, json, os, socket, sys

def can_write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError as e:
        return e.strerror

def connects(host, port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        return True
    except OSError as e:
        return str(e)
    finally:
        s.close()

status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
ports = [int(p) for p in sys.argv[1:]]
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "euid": os.geteuid(),
    "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "cwd": os.getcwd(),
    "root_fs": can_write("/etc/runyard-probe"),
    "tmp": can_write("/tmp/probe"),
    "code": can_write("/runyard/code/probe"),
    "data": can_write("/runyard/data/probe"),
    "result": can_write(os.path.join(os.environ["RESULT_DIR"], "probe")),
    "connects": {str(p): connects("127.0.0.1", p) for p in ports},
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "env": dict(os.environ),
}))
"""


@pytest.fixture(scope="module")
def client(container_engine: str) -> Iterator[docker.DockerClient]:
    c = connect(container_engine)
    yield c
    c.close()


@pytest.fixture(scope="module")
def framework(python_image: str) -> tuple[str, str]:
    """The framework the runs ask for: python 3.11, whose image the fixture made sure of."""
    return PYTHON


@pytest.fixture
def runtime(container_engine: str, tmp_path: Path) -> Iterator[ContainerRuntime]:
    rt = new_runtime(container_engine, tmp_path / "work")
    yield rt
    remove_agent_containers(rt.client, rt.agent_id)
    rt.client.close()


def facts(stdout: str) -> dict[str, object]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, stdout
    parsed: dict[str, object] = json.loads(lines[-1])
    return parsed


def test_a_run_sees_only_its_sandbox(
    runtime: ContainerRuntime,
    framework: tuple[str, str],
    python_image: str,
    tmp_path: Path,
    nats_server: NatsServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNYARD_API_KEY", "agent-secret-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "agent-aws-secret")
    ports = [4222, 5432, nats_server.port]
    work = spec_work(
        "python3 facts.py " + " ".join(map(str, ports)),
        framework=framework[0],
        env={"MY_FLAG": "on"},
    )
    ran = asyncio.run(run_in_container(runtime, tmp_path / "work", work, {"facts.py": FACTS_PY}))
    assert ran.exit.exit_code == 0, ran.stderr
    f = facts(ran.stdout)
    assert f["uid"] == f["euid"] == 65534 and f["gid"] == 65534  # never root
    assert f["cap_eff"] == f["cap_bnd"] == "0000000000000000"  # no capabilities at all
    assert f["no_new_privs"] == "1"
    assert f["cwd"] == "/runyard/code"
    assert f["root_fs"] == "Read-only file system"
    assert f["tmp"] is True
    assert f["code"] == "Read-only file system"
    assert f["data"] == "Read-only file system"
    assert f["result"] is True and (ran.dirs.result / "probe").read_text() == "x"
    # No network: its own loopback only, where neither NATS nor PostgreSQL listens.
    connects = f["connects"]
    assert isinstance(connects, dict) and all(v is not True for v in connects.values()), connects
    assert f["interfaces"] == ["lo"]
    env = f["env"]
    assert isinstance(env, dict)
    assert "RUNYARD_API_KEY" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["MY_FLAG"] == "on" and env["RESULT_DIR"] == "/runyard/result" and env["DATA_DIR"] == "/runyard/data"
    assert env["RUNYARD_RUN_ID"] == work.run_id
    assert env["RUNYARD_METRICS_FILE"] == "/runyard/output/metrics.jsonl"
    # Whatever the agent's environment holds, only the allowlist, the image's own variables and the
    # engine's few reach the run.
    config = runtime.client.images.get(python_image).attrs["Config"]
    image_own = {item.split("=", 1)[0] for item in config.get("Env") or []}
    engine_own = {"HOSTNAME", "container", "TERM", "PWD", "SHLVL", "_"}
    agent_keys = set(os.environ) - engine_own - image_own - {"PATH", "HOME", "LANG", "PYTHONUNBUFFERED"}
    assert not agent_keys & set(env), agent_keys & set(env)


def test_egress_gets_a_network_but_not_the_hosts_loopback(
    runtime: ContainerRuntime, framework: tuple[str, str], tmp_path: Path, nats_server: NatsServer
) -> None:
    ports = [4222, 5432, nats_server.port]
    work = spec_work(
        "python3 facts.py " + " ".join(map(str, ports)), framework=framework[0], network=RunNetwork.RUN_NETWORK_EGRESS
    )
    ran = asyncio.run(run_in_container(runtime, tmp_path / "work", work, {"facts.py": FACTS_PY}))
    assert ran.exit.exit_code == 0, ran.stderr
    f = facts(ran.stdout)
    interfaces = f["interfaces"]
    assert isinstance(interfaces, list) and len(interfaces) > 1  # a bridge, not nothing
    connects = f["connects"]
    assert isinstance(connects, dict) and all(v is not True for v in connects.values()), connects


def test_memory_past_the_limit_is_an_oom_kill(
    runtime: ContainerRuntime, framework: tuple[str, str], tmp_path: Path
) -> None:
    work = spec_work(
        "python3 -c 'b = bytearray(600 * 2**20); print(len(b))'", framework=framework[0], memory_bytes=128 * MiB
    )
    ran = asyncio.run(run_in_container(runtime, tmp_path / "work", work))
    assert ran.exit.oom_killed, (ran.exit, ran.stderr)
    assert ran.exit.exit_code == 137


def test_memory_within_the_limit_is_no_oom(
    runtime: ContainerRuntime, framework: tuple[str, str], tmp_path: Path
) -> None:
    work = spec_work(
        "python3 -c 'b = bytearray(32 * 2**20); print(len(b))'", framework=framework[0], memory_bytes=256 * MiB
    )
    ran = asyncio.run(run_in_container(runtime, tmp_path / "work", work))
    assert ran.exit.exit_code == 0 and not ran.exit.oom_killed, ran.stderr
    assert ran.stdout.strip() == str(32 * MiB)


FORK_BOMB_PY = r"""
import os, time
made = 0
try:
    while made < 1000:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        made += 1
except OSError as e:
    print("fork refused after", made, e.errno)
else:
    print("forked", made)
"""


def test_the_pids_limit_stops_a_fork_bomb(container_engine: str, framework: tuple[str, str], tmp_path: Path) -> None:
    runtime = new_runtime(container_engine, tmp_path / "work", sandbox=Sandbox(pids_limit=64))
    try:
        work = spec_work("python3 bomb.py", framework=framework[0])
        ran = asyncio.run(run_in_container(runtime, tmp_path / "work", work, {"bomb.py": FORK_BOMB_PY}))
    finally:
        remove_agent_containers(runtime.client, runtime.agent_id)
    assert ran.stdout.startswith("fork refused after"), ran.stdout
    assert int(ran.stdout.split()[3]) < 64
    assert ran.seconds < 20  # the leftover children went with the container


def test_cancel_stops_the_container_within_the_grace(
    runtime: ContainerRuntime, framework: tuple[str, str], tmp_path: Path
) -> None:
    async def scenario() -> tuple[int, float, int, float]:
        polite, _ = await start_in_container(
            runtime, tmp_path / "work", spec_work("echo up; sleep 60", framework=framework[0])
        )
        stubborn, _ = await start_in_container(
            runtime, tmp_path / "work", spec_work("trap '' TERM; echo up; sleep 60", framework=framework[0])
        )
        for proc in (polite, stubborn):
            deadline = time.monotonic() + 10
            while "up" not in proc.stdout_path.read_text() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        t0 = time.monotonic()
        polite_code = await polite.terminate(2.0)
        polite_s = time.monotonic() - t0
        t0 = time.monotonic()
        stubborn_code = await stubborn.terminate(2.0)
        stubborn_s = time.monotonic() - t0
        for proc in (polite, stubborn):
            await asyncio.to_thread(proc.remove)
        return polite_code, polite_s, stubborn_code, stubborn_s

    polite_code, polite_s, stubborn_code, stubborn_s = asyncio.run(scenario())
    assert polite_code == -15 and polite_s < 1.5  # SIGTERM reached the command at once
    assert stubborn_code == -9 and 1.5 <= stubborn_s < 5.0  # SIGKILL once the grace was over


def test_a_run_in_its_own_image(
    runtime: ContainerRuntime, client: docker.DockerClient, python_image: str, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    ref = custom_image(client, python_image, f"localhost/runyard-test/custom{marker[:6]}", marker)
    try:
        work = spec_work("cat /runyard-custom && id -u", image=ref)
        ran = asyncio.run(run_in_container(runtime, tmp_path / "work", work))
    finally:
        remove_image(client, ref)
    assert ran.exit.exit_code == 0, ran.stderr
    assert ran.stdout.split() == [marker, "65534"]


def test_an_image_or_framework_not_held_is_a_clear_error(runtime: ContainerRuntime, tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match="localhost/no-such-image:1 is not on agent"):
        asyncio.run(run_in_container(runtime, tmp_path / "work", spec_work("true", image="localhost/no-such-image:1")))
    with pytest.raises(ContainerError, match=r"holds no image for framework nosuchframework 9\.9"):
        asyncio.run(
            run_in_container(runtime, tmp_path / "work", spec_work("true", framework="nosuchframework", version="9.9"))
        )


def test_output_and_exit_reach_the_agent_quickly(
    runtime: ContainerRuntime, framework: tuple[str, str], tmp_path: Path
) -> None:
    work = spec_work("echo out; echo err >&2; exit 3", framework=framework[0])
    ran = asyncio.run(run_in_container(runtime, tmp_path / "work", work))
    assert (ran.exit.exit_code, ran.exit.oom_killed, ran.exit.returncode) == (3, False, 3)
    assert (ran.stdout, ran.stderr) == ("out\n", "err\n")
    # The exit file, not the engine's (slow) wait, told the end.
    assert ran.seconds < 1.5, ran.seconds


def test_an_images_volumes_go_with_its_container(
    runtime: ContainerRuntime, client: docker.DockerClient, python_image: str, tmp_path: Path
) -> None:
    """A user image's VOLUME becomes an anonymous volume the run can write: removed with the container."""
    marker = uuid.uuid4().hex
    ref = custom_image(client, python_image, f"localhost/runyard-test/vol{marker[:6]}", marker, ("VOLUME /scratch",))

    async def scenario() -> list[str]:
        proc, _dirs = await start_in_container(runtime, tmp_path / "work", spec_work("true", image=ref))
        await proc.wait()
        mounts = client.api.inspect_container(proc.id)["Mounts"]
        volumes = [str(m["Name"]) for m in mounts if m.get("Type") == "volume"]
        await asyncio.to_thread(proc.remove)
        return volumes

    try:
        volumes = asyncio.run(scenario())
    finally:
        remove_image(client, ref)
    assert volumes, "the image's VOLUME made no volume"
    for name in volumes:
        with pytest.raises(docker.errors.NotFound):
            client.volumes.get(name)
