"""A Runyard stack of real processes: `runyard server` replicas and `runyard agent`s.

Each process is started exactly as a user would start it (the console entry
point with flags), logs to a file in the test's folder, and is stopped with
SIGTERM so graceful shutdown is exercised too.

The first server creates account "default" and writes its admin and agent keys
to ``root/keys.yaml`` (``--bootstrap-keys``, the agent key bound to agent id
``agent-1``); the stack reads them into `admin_key` and `agent_key`. Agent keys
speak for one agent only, so every other agent id gets its own key, made
through the admin API on first use (`key_for`). `channel()` sends the admin key
(or the key given) with every call. With `nats_nkey` set (a NATS with users),
servers connect as that NKey user and each agent gets `agent_nkeys[agent_id]`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runyard.client.auth import with_api_key
from runyard.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    common_pb2,
    experiment_service_pb2_grpc,
    run_service_pb2_grpc,
)
from tests.support.services import free_port

#: The agent id the bootstrap agent key is bound to (`--bootstrap-agent-id`).
BOOTSTRAP_AGENT = "agent-1"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "runyard.client.cli", *args]


@dataclass
class Proc:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        code = self.popen.returncode
        self.popen = None
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Stack:
    root: Path
    database_url: str
    nats_url: str
    storage_root: str | None = None
    s3_endpoint_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    servers: list[Proc] = field(default_factory=list)
    agents: list[Proc] = field(default_factory=list)
    port: int = 0
    admin_key: str = ""
    agent_key: str = ""
    # Agent id -> its agent key (agent-1's is the bootstrap `agent_key`).
    agent_keys: dict[str, str] = field(default_factory=dict)
    # NKey seed files: the control plane's, and each agent's, when NATS has users.
    nats_nkey: str | None = None
    agent_nkeys: dict[str, str] = field(default_factory=dict)
    #: What account default may read and write: the buckets the tests' manifests use (as `runyard up` grants
    #: s3://datasets/ and s3://results/).
    default_storage: tuple[str, ...] = ("s3://default/", "s3://datasets/", "s3://results/", "s3://r/")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def storage_flags(self) -> list[str]:
        flags = []
        if self.storage_root:
            flags += ["--storage-root", self.storage_root]
        if self.s3_endpoint_url:
            flags += ["--s3-endpoint-url", self.s3_endpoint_url]
        return flags

    def start_server(self, port: int | None = None, **flags: str) -> Proc:
        port = port or self.port or free_port()
        self.port = self.port or port
        extra = [x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", v)]
        proc = Proc(
            f"server-{len(self.servers)}",
            cli(
                "server",
                "--listen",
                f"127.0.0.1:{port}",
                "--database-url",
                self.database_url,
                "--nats-url",
                self.nats_url,
                *self.storage_flags(),
                "--bootstrap-keys",
                str(self.keys_file),
                "--bootstrap-agent-id",
                BOOTSTRAP_AGENT,
                *(["--nats-nkey", self.nats_nkey] if self.nats_nkey else []),
                *(x for prefix in self.default_storage for x in ("--bootstrap-storage", prefix)),
                *extra,
            ),
            self.root / f"server-{len(self.servers)}.log",
            self.env(),
        ).start()
        self.servers.append(proc)
        wait_healthy(f"127.0.0.1:{port}", proc)
        if not self.admin_key:
            self.read_keys()
        return proc

    @property
    def keys_file(self) -> Path:
        return self.root / "keys.yaml"

    def read_keys(self) -> None:
        """The keys the first server wrote (the database had no account before it)."""
        keys = yaml.safe_load(self.keys_file.read_text(encoding="utf-8"))
        self.admin_key, self.agent_key = keys["admin_key"], keys["agent_key"]

    def key_for(self, agent_id: str) -> str:
        """The agent key bound to `agent_id` (made through the admin API the first time)."""
        if agent_id == BOOTSTRAP_AGENT and self.agent_key:
            return self.agent_key
        if agent_id not in self.agent_keys:
            request = admin_service_pb2.CreateApiKeyRequest(
                account_id="default", role=common_pb2.ROLE_AGENT, agent_id=agent_id, name=f"test agent {agent_id}"
            )
            stub = admin_service_pb2_grpc.AdminServiceStub(self.channel())
            self.agent_keys[agent_id] = stub.CreateApiKey(request, timeout=30).secret
        return self.agent_keys[agent_id]

    def start_agent(self, agent_id: str = "agent-1", slots: int = 2, *extra: str) -> Proc:
        proc = Proc(
            agent_id,
            cli(
                "agent",
                "--agent-id",
                agent_id,
                "--nats-url",
                self.nats_url,
                "--slots",
                str(slots),
                "--work-dir",
                str(self.root / agent_id),
                *self.storage_flags(),
                *(["--api-key", self.key_for(agent_id)] if self.agent_key else []),
                *(["--nats-nkey", self.agent_nkeys[agent_id]] if agent_id in self.agent_nkeys else []),
                *extra,
            ),
            self.root / f"{agent_id}.log",
            self.env(),
        ).start()
        self.agents.append(proc)
        return proc

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self, key: str | None = None) -> grpc.Channel:
        """A channel whose calls carry `key` (default: the admin key); "" for no key at all."""
        return with_api_key(grpc.insecure_channel(self.endpoint), self.admin_key if key is None else key)

    def stop(self) -> None:
        for proc in [*self.agents, *self.servers]:
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"===== {p.name}\n{p.output()[-6000:]}" for p in [*self.servers, *self.agents])


class Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.experiments = experiment_service_pb2_grpc.ExperimentServiceStub(channel)
        self.runs = run_service_pb2_grpc.RunServiceStub(channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(channel)


def wait_healthy(endpoint: str, proc: Proc | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.output()[-4000:]}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"server at {endpoint} not healthy after {timeout}s")
