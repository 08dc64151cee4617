"""Hostile training scripts, one test per attack: each must fail, and nothing outside the run may change.

The agent runs as its own process, started the way `runyard up` starts it: its API key
and AWS credentials in its environment (canaries here), its state folder in the work
root, the stack's keys file and NATS seed beside it. Beside the hostile run, a victim
run holds a result file. The hostile script (hostile.py) gets every target's host path,
port and pid through its environment, tries the attack, and prints what it saw; the test
asserts on that AND on the host side (the victim's file, the storage root, the keys, the
agent's life).

Runtimes: the process runtime under bwrap, and (as a strict xfail) the process runtime
unsandboxed, which shows that every test can fail: there the attacks succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from runyard import bus
from runyard.objectstore import open_store
from runyard.v1.agent_pb2 import AgentControl, AgentReport, CancelAttempt, WorkAssignment
from runyard.v1.common_pb2 import Framework, LogStream, RunSpec
from tests.integration.agent.harness import code_tar, new_agent_id
from tests.support.services import NatsServer, free_port, wait_until

pytestmark = pytest.mark.integration

HOSTILE = (Path(__file__).parent / "hostile.py").read_text()
CANARY = "runyard-canary-"
VICTIM_WEIGHTS = "victim weights\n"
VICTIM = """\
import os, time
with open(os.path.join(os.environ["RESULT_DIR"], "model.txt"), "w") as f:
    f.write("victim weights\\n")
print("victim ready", flush=True)
while True:
    time.sleep(0.2)
"""
TERMINAL = ("completed", "failed", "canceled")

_UNSANDBOXED = pytest.param(
    "none", marks=pytest.mark.xfail(strict=True, reason="unsandboxed, the process runtime lets the attack through")
)
RUNTIMES = ["bwrap", _UNSANDBOXED]

AGENT_SCRIPT = """
import asyncio, json, os, sys
from runyard.agent.config import AgentConfig
from runyard.agent.main import run_agent
fields = json.loads(sys.argv[1])
asyncio.run(run_agent(AgentConfig(api_key=os.environ["RUNYARD_API_KEY"], **fields)))
"""


@dataclass
class World:
    """The host the hostile run lives on, and what it may not touch."""

    tmp: Path
    nats: NatsServer
    runtime: str
    agent_id: str = field(default_factory=new_agent_id)
    unique: str = field(default_factory=lambda: f"runyard-attack-{uuid.uuid4().hex[:10]}")

    @property
    def work(self) -> Path:
        return self.tmp / "work"

    @property
    def objects(self) -> Path:
        return self.tmp / "objects"

    @property
    def keys_file(self) -> Path:
        return self.tmp / "stack" / "keys.yaml"

    @property
    def nkey_file(self) -> Path:
        return self.tmp / "stack" / "agent.nk"

    @property
    def up_state(self) -> Path:
        return self.tmp / "home" / ".local" / "state" / "runyard" / "up.yaml"

    @property
    def outside_file(self) -> Path:
        return self.tmp / "outside.txt"

    @property
    def host_tmp_marker(self) -> Path:
        return Path("/tmp") / f"{self.unique}-host-marker"

    def victim_result(self) -> Path:
        return self.work / "run-victim" / "1" / "result"

    def prepare(self) -> None:
        for path, text in (
            (self.keys_file, f"admin_key: {CANARY}admin\nagent_key: {CANARY}agent\n"),
            (self.nkey_file, f"SU{CANARY}seed\n"),
            (self.up_state, f"api_key: {CANARY}admin\n"),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o600)
        self.host_tmp_marker.write_text("host tmp\n")
        store = open_store(self.objects.as_uri(), None)
        store.put_bytes("s3://code/hostile.tar.gz", code_tar({"hostile.py": HOSTILE}))
        store.put_bytes("s3://code/victim.tar.gz", code_tar({"victim.py": VICTIM}))
        store.put_bytes("s3://datasets/attack/numbers.txt", b"1 2 3\n")

    def cleanup(self) -> None:
        """What an attack that got through may have left on the host outside the test's folder."""
        paths = [
            self.host_tmp_marker,
            Path("/tmp") / self.unique,
            Path("/usr") / self.unique,
            Path("/etc") / self.unique,
        ]
        paths.append(Path(sys.executable).parent / self.unique)
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()

    def snapshot(self) -> dict[str, bytes]:
        """Every file that is not the hostile run's own: the keys, the victim's folder, the storage root."""
        files: dict[str, bytes] = {}
        for root in (self.tmp / "stack", self.tmp / "home", self.objects, self.work / "run-victim"):
            for path in sorted(root.rglob("*")):
                if path.is_file() and not path.is_symlink() and "/results/attack/" not in str(path):
                    files[str(path)] = path.read_bytes()
        return files

    def agent_fields(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "nats_url": self.nats.url,
            "slots": 2,
            "work_dir": str(self.work),
            "storage_root": self.objects.as_uri(),
            "heartbeat_s": 0.5,
            "cancel_grace_s": 1.0,
            "sandbox": self.runtime,
        }

    def agent_env(self) -> dict[str, str]:
        # The agent's own environment, as `runyard up` gives it: its key and the host's cloud credentials.
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.tmp / "home"),
            "RUNYARD_API_KEY": f"{CANARY}agent-key",
            "AWS_SECRET_ACCESS_KEY": f"{CANARY}aws-secret",
            "AWS_ACCESS_KEY_ID": f"{CANARY}aws-id",
            "PYTHONUNBUFFERED": "1",
        }


@dataclass
class Scene:
    world: World
    agent: subprocess.Popen[bytes]
    js: Any
    sub: Any
    grpc: socket.socket
    reports: list[AgentReport] = field(default_factory=list)
    victim_pgid: int = 0

    async def next_report(self, timeout: float) -> AgentReport:
        msgs = await self.sub.fetch(1, timeout=timeout)
        await msgs[0].ack()
        report = AgentReport.FromString(msgs[0].data)
        self.reports.append(report)
        return report

    async def until(self, run_id: str, kinds: tuple[str, ...], timeout: float = 30.0) -> AgentReport:
        deadline = asyncio.get_running_loop().time() + timeout
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                report = await self.next_report(min(left, 2.0))
            except TimeoutError:
                if self.agent.poll() is not None:
                    raise AssertionError(f"the agent exited with {self.agent.returncode}") from None
                continue
            if report.run_id == run_id and report.WhichOneof("body") in kinds:
                return report
        raise AssertionError(f"no {kinds} report for {run_id} within {timeout}s")

    def of(self, run_id: str) -> list[AgentReport]:
        return [r for r in self.reports if r.run_id == run_id]

    def stdout(self, run_id: str) -> list[str]:
        return [
            line.text
            for r in self.of(run_id)
            if r.HasField("logged")
            for line in r.logged.lines
            if line.stream == LogStream.LOG_STREAM_STDOUT
        ]

    def work(self, run_id: str, code: str, command: str, env: dict[str, str]) -> WorkAssignment:
        spec = RunSpec(
            command=command,
            framework=Framework(name="python"),
            code_uri=f"s3://code/{code}.tar.gz",
            data_uri="s3://datasets/attack/",
            results_uri=f"s3://results/attack/{run_id}",
            env=env,
        )
        return WorkAssignment(run_id=run_id, attempt=1, experiment_id="exp-attack", spec=spec, lease_seconds=60)


def _record_pgid(record: Path) -> int:
    try:
        return int(json.loads(record.read_text()).get("pgid", 0))
    except (OSError, ValueError):
        return 0


@contextlib.asynccontextmanager
async def scene(world: World) -> AsyncIterator[Scene]:
    """The agent (a process of its own), the victim run holding its result, a stand-in gRPC port."""
    world.prepare()
    nc = await nats.connect(world.nats.url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    sub = await js.pull_subscribe(
        bus.reports_subject(world.agent_id),
        stream=bus.REPORTS_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
    )
    grpc = socket.socket()
    grpc.bind(("127.0.0.1", free_port()))
    grpc.listen(8)
    grpc.setblocking(False)
    log = open(world.tmp / "agent.log", "wb")  # noqa: SIM115 - closed below
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT_SCRIPT, json.dumps(world.agent_fields())],
        env=world.agent_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    s = Scene(world, agent, js, sub, grpc)
    try:
        await s.until("", ("registered",), timeout=30)
        victim = s.work("run-victim", "victim", "python victim.py", {})
        await js.publish(bus.work_subject(world.agent_id), victim.SerializeToString())
        await s.until("run-victim", ("started",))
        model = world.victim_result() / "model.txt"
        await asyncio.to_thread(wait_until, model.exists, 20, "the victim's model.txt")
        record = world.work / ".attempts" / "run-victim~1.json"
        await asyncio.to_thread(wait_until, lambda: _record_pgid(record) > 0, 20, "the victim's pgid")
        s.victim_pgid = _record_pgid(record)
        yield s
    finally:
        with contextlib.suppress(Exception):
            control = AgentControl(cancel=CancelAttempt(run_id="run-victim", attempt=1, grace_seconds=1))
            await js.publish(bus.control_subject(world.agent_id), control.SerializeToString())
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(agent.wait, 30)
            except subprocess.TimeoutExpired:
                agent.kill()
        log.close()
        grpc.close()
        await nc.close()
        world.cleanup()


@pytest.fixture
def world(request: pytest.FixtureRequest, tmp_path: Path, nats_server: NatsServer) -> Iterator[World]:
    runtime = request.param
    if runtime == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    w = World(tmp_path, nats_server, runtime)
    try:
        yield w
    finally:
        w.cleanup()


@dataclass
class Outcome:
    """What the hostile run saw, and the host as the test found it right after the run ended."""

    findings: dict[str, str]
    before: dict[str, bytes]
    after: dict[str, bytes]
    agent_alive: bool
    victim_alive: bool
    victim_files: dict[str, str]
    victim_ended: bool
    api_connections: int
    forged: int

    @property
    def succeeded(self) -> dict[str, str]:
        return {k: v for k, v in self.findings.items() if not v.startswith("blocked")}

    def assert_victim_untouched(self) -> None:
        assert self.victim_files == {"model.txt": VICTIM_WEIGHTS}
        assert self.victim_alive and not self.victim_ended, "the victim run ended"


def _connections(listener: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def attack(world: World, name: str) -> Outcome:
    """Run hostile.py NAME beside the victim; what it found, and the host after it."""

    async def go() -> Outcome:
        async with scene(world) as s:
            before = world.snapshot()
            w = world
            env = {
                "T_KEYS_FILE": str(w.keys_file),
                "T_NKEY_FILE": str(w.nkey_file),
                "T_UP_STATE": str(w.up_state),
                "T_STATE_DIR": str(w.work / ".attempts"),
                "T_STATE_RECORD": str(w.work / ".attempts" / "run-victim~1.json"),
                "T_AGENT_PID": str(s.agent.pid),
                "T_AGENT_ID": w.agent_id,
                "T_VICTIM_RUN": "run-victim",
                "T_VICTIM_PGID": str(s.victim_pgid),
                "T_VICTIM_RESULT": str(w.victim_result()),
                "T_VICTIM_FILE": str(w.victim_result() / "model.txt"),
                "T_WORK_ROOT": str(w.work),
                "T_STORAGE_ROOT": str(w.objects),
                "T_STORAGE_OBJECT": str(w.objects / "code" / "victim.tar.gz"),
                "T_NATS_URL": w.nats.url,
                "T_NATS_PORT": str(w.nats.port),
                "T_GRPC_PORT": str(s.grpc.getsockname()[1]),
                "T_OUTSIDE_FILE": str(w.outside_file),
                "T_UNIQUE": w.unique,
                "T_HOST_TMP_MARKER": str(w.host_tmp_marker),
            }
            hostile = s.work("run-hostile", "hostile", f"python hostile.py {name}", env)
            await s.js.publish(bus.work_subject(world.agent_id), hostile.SerializeToString())
            end = await s.until("run-hostile", TERMINAL, timeout=60)
            lines = [x for x in s.stdout("run-hostile") if x.startswith("FINDINGS ")]
            assert len(lines) == 1, (end, s.stdout("run-hostile"))
            victim = world.victim_result()
            return Outcome(
                findings=json.loads(lines[0].removeprefix("FINDINGS ")),
                before=before,
                after=world.snapshot(),
                agent_alive=s.agent.poll() is None,
                victim_alive=_group_alive(s.victim_pgid),
                victim_files={p.name: p.read_text() for p in victim.iterdir()} if victim.is_dir() else {},
                victim_ended=any(r.WhichOneof("body") in TERMINAL for r in s.of("run-victim")),
                api_connections=_connections(s.grpc),
                forged=sum(
                    r.WhichOneof("body") == "completed" and r.completed.results_uri == "s3://forged/" for r in s.reports
                ),
            )

    return asyncio.run(go())


# -- one test per attack ------------------------------------------------------------------


@pytest.mark.parametrize("world", RUNTIMES, indirect=True)
def test_reading_the_agents_keys_fails(world: World) -> None:
    out = attack(world, "keys")
    assert set(out.findings) >= {"keys_file", "state_record", "proc_environ", "agent_environ", "own_environment"}
    assert not out.succeeded, out.findings
    assert out.after == out.before
    assert out.agent_alive


@pytest.mark.parametrize("world", RUNTIMES, indirect=True)
def test_reading_or_writing_another_runs_folders_or_the_storage_root_fails(world: World) -> None:
    out = attack(world, "other_runs")
    assert not out.succeeded, out.findings
    assert out.after == out.before, set(out.after) ^ set(out.before)
    assert not (world.objects / "planted.txt").exists()
    out.assert_victim_untouched()


@pytest.mark.parametrize("world", RUNTIMES, indirect=True)
def test_connecting_to_nats_postgresql_or_the_api_fails(world: World) -> None:
    out = attack(world, "network")
    assert not out.succeeded, out.findings
    assert out.api_connections == 0, "the hostile run reached the stand-in API port"


@pytest.mark.parametrize("world", RUNTIMES, indirect=True)
def test_publishing_a_forged_report_fails(world: World) -> None:
    out = attack(world, "forge")
    assert not out.succeeded, out.findings
    assert out.forged == 0
    out.assert_victim_untouched()


@pytest.mark.parametrize("world", RUNTIMES, indirect=True)
def test_killing_the_agent_or_another_run_fails(world: World) -> None:
    out = attack(world, "kill_agent")
    assert not out.succeeded, out.findings
    assert out.agent_alive, "the agent died"
    out.assert_victim_untouched()


@pytest.mark.parametrize("world", RUNTIMES, indirect=True)
def test_writing_outside_the_result_folder_fails(world: World) -> None:
    out = attack(world, "write_outside")
    assert not out.succeeded, out.findings
    assert out.after == out.before
    assert not world.outside_file.exists()
    assert not (Path("/usr") / world.unique).exists() and not (Path("/etc") / world.unique).exists()
    assert not (Path("/tmp") / world.unique).exists()
    assert not (Path(sys.executable).parent / world.unique).exists()
    assert not (world.work / "planted.txt").exists()
    # What it may write, it could: the results were uploaded.
    store = open_store(world.objects.as_uri(), None)
    assert store.get_bytes("s3://results/attack/run-hostile/allowed.txt") == b"results are writable\n"
    out.assert_victim_untouched()


@pytest.mark.parametrize("world", RUNTIMES, indirect=True)
def test_running_as_root_fails(world: World) -> None:
    out = attack(world, "root")
    assert set(out.findings) == {"uid", "setuid", "chown", "mount", "etc_passwd"}
    assert not out.succeeded, out.findings
    assert "written by a hostile run" not in Path("/etc/passwd").read_text()


def test_the_hostile_script_reports_every_probe() -> None:
    """The script itself: a probe that raises is 'blocked', one that returns is 'SUCCEEDED'."""
    code = textwrap.dedent(
        """
        import hostile
        hostile.probe("a", lambda: "x")
        hostile.probe("b", lambda: 1 / 0)
        print(hostile.findings)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
    ).stdout
    assert "'a': 'SUCCEEDED: x'" in out and "'b': 'blocked: ZeroDivisionError" in out
