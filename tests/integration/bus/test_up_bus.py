"""`runyard up` runs its NATS with users, and the operator's commands make them.

The stack is the real one (`runyard up --detach`, its own nats-server, server
and agent); the intruder is a plain NATS client on the same machine, which is
all it took to cancel another account's run before.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from runyard import bus, natsauth
from runyard.client.daemons import default_agent_id
from runyard.client.sdk import Client
from runyard.config import read_state
from runyard.v1 import agent_pb2, common_pb2
from tests.support.services import NatsServer, wait_until

SLEEPER = """\
name: held
framework: {name: python}
command: python -c "import time; time.sleep(120)"
resources: {gpus: 0, cpus: 1}
results: s3://results/held
"""


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runyard.client.cli", *args], capture_output=True, text=True, timeout=120, check=check
    )


@dataclass
class Up:
    data_dir: Path
    endpoint: str
    nats_url: str
    admin_key: str
    agent_id: str


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    root = tmp_path_factory.mktemp("up-bus")
    saved = dict(os.environ)
    os.environ["RUNYARD_STATE_DIR"] = str(root / "state")
    os.environ["RUNYARD_CONFIG"] = str(root / "config.yaml")
    data_dir = root / "data"
    try:
        started = cli("up", "--data-dir", str(data_dir), "--port", "0", "--slots", "1", "--detach", check=False)
        assert started.returncode == 0, started.stderr + (data_dir / "up.log").read_text(errors="replace")
        state = read_state()
        assert state is not None
        yield Up(data_dir, state.endpoint, state.nats_url, state.api_key, default_agent_id())
    finally:
        cli("down", check=False)
        os.environ.clear()
        os.environ.update(saved)


async def _intrude(url: str, agent_id: str, run_id: str) -> str:
    """Try what an anonymous client did before; the error that stopped it ("" when nothing did)."""
    try:
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0)
    except Exception as e:
        return str(e)
    try:
        js = nc.jetstream()
        cancel = agent_pb2.AgentControl(cancel=agent_pb2.CancelAttempt(run_id=run_id, attempt=1))
        await js.publish(bus.control_subject(agent_id), cancel.SerializeToString(), timeout=3)
        beat = agent_pb2.AgentHeartbeat(agent_id="fake-8gpu")
        await nc.publish(bus.heartbeat_subject("fake-8gpu"), beat.SerializeToString())
        await nc.flush()
    finally:
        await nc.close()
    return ""


def test_an_anonymous_client_cannot_reach_the_bus_of_runyard_up(up: Up) -> None:
    with Client(up.endpoint, api_key=up.admin_key) as client:
        exp = client.create_experiment(SLEEPER)
        run_id = exp.runs[0].id
        wait_until(lambda: client.get_run(run_id).state == common_pb2.RUN_STATE_RUNNING, 60, "the run never started")
        refusal = asyncio.run(_intrude(up.nats_url, up.agent_id, run_id))
        assert "authorization" in refusal.lower(), f"an anonymous client got onto the bus ({refusal!r})"
        assert client.get_run(run_id).state == common_pb2.RUN_STATE_RUNNING
        client.cancel_run(run_id)
        wait_until(lambda: client.get_run(run_id).state == common_pb2.RUN_STATE_CANCELED, 60, "cancel did not end it")


def test_an_operator_adds_an_agent_to_the_bus(up: Up, tmp_path: Path) -> None:
    """`admin keys create --role agent` makes the NKey; `admin nats-config` renders the users for nats-server."""
    env_key = ["--endpoint", up.endpoint, "--api-key", up.admin_key]
    seed_file = tmp_path / "gpu-2.nk"
    made = cli("admin", "keys", "create", "default", "--role", "agent", "--agent-id", "gpu-2",
               "--nats-nkey-out", str(seed_file), "-o", "json", *env_key)  # fmt: skip
    key = json.loads(made.stdout)
    public = natsauth.public_key(natsauth.read_seed(seed_file))
    assert key["key"]["nats_public_key"] == public and "nats_nkey_seed" not in key
    assert seed_file.stat().st_mode & 0o777 == 0o600
    refused = cli("admin", "keys", "create", "default", "--role", "agent", *env_key, check=False)
    assert refused.returncode == 1 and "--agent-id" in refused.stderr

    control_plane = tmp_path / "control-plane.nk"
    conf = tmp_path / "auth.conf"
    cli("admin", "nats-config", "--control-plane-nkey", str(control_plane), "--out", str(conf), *env_key)
    text = conf.read_text()
    assert public in text and natsauth.public_key(natsauth.read_seed(control_plane)) in text
    assert oct(control_plane.stat().st_mode & 0o777) == oct(0o600)

    # The operator's nats-server takes the block as it is; the new agent gets on with its seed, as itself only.
    server = NatsServer(tmp_path / "nats", config=text).start()
    try:
        asyncio.run(_as_gpu_2(server.url, seed_file, control_plane))
    finally:
        server.stop()


async def _as_gpu_2(url: str, seed: Path, control_plane: Path) -> None:
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    cp = await nats.connect(url, **natsauth.connect_options(url, str(control_plane)))
    got: list[str] = []

    async def collect(msg: object) -> None:
        got.append(str(getattr(msg, "subject", "")))

    await cp.subscribe("runyard.heartbeat.*", cb=collect)
    await cp.flush()
    nc = await nats.connect(
        url,
        error_cb=on_error,
        inbox_prefix=natsauth.agent_inbox_prefix("gpu-2"),
        **natsauth.connect_options(url, str(seed)),
    )
    await nc.publish(bus.heartbeat_subject("gpu-2"), b"beat")
    await nc.publish(bus.heartbeat_subject("gpu-1"), b"forged")
    await nc.flush()
    await asyncio.sleep(0.5)
    await nc.close()
    await cp.close()
    assert got == [bus.heartbeat_subject("gpu-2")]
    assert any("permissions violation" in e.lower() for e in errors), errors
