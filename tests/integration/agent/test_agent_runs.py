"""The node agent against a real NATS JetStream and real object storage (files, moto S3)."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import boto3
import pytest
from google.protobuf.struct_pb2 import Value

from runyard import bus
from runyard.agent.config import AgentConfig
from runyard.objectstore import ObjectStore, open_store
from runyard.v1.agent_pb2 import AgentHeartbeat, AgentReport, WorkAssignment
from runyard.v1.common_pb2 import FailureReason, Framework, LogStream, MetricPattern, RunSpec
from tests.integration.agent.harness import (
    code_tar,
    kinds,
    metric_points,
    new_agent_id,
    running_agent,
    texts,
    transitions,
)
from tests.support.services import MotoS3, NatsServer, wait_until

pytestmark = pytest.mark.integration

TRAIN_PY = """\
import os, sys
import runyard

print("hello from", os.environ["RUNYARD_RUN_ID"], os.environ["RUNYARD_ATTEMPT"])
print("step 1 loss=0.5")
print("step 2 loss=0.25")
print("careful: stderr line", file=sys.stderr)
with open(os.path.join(os.environ["DATA_DIR"], "numbers.txt")) as f:
    print("data says", f.read().strip())
runyard.log(step=1, acc=0.75)
runyard.log(step=2, acc=0.875)
result = os.environ["RESULT_DIR"]
os.makedirs(os.path.join(result, "sub"), exist_ok=True)
with open(os.path.join(result, "model.txt"), "w") as f:
    f.write("weights")
with open(os.path.join(result, "sub", "info.json"), "w") as f:
    f.write("{}")
print("hp", os.environ["RUNYARD_HP_LR"], os.environ["RUNYARD_HP_HIDDEN"], "gpus=" + os.environ["CUDA_VISIBLE_DEVICES"])
print("python", sys.executable)
"""


def process_gone(pid: int) -> bool:
    """Gone or a zombie waiting for init to reap it (it holds no resources then)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def agent_config(tmp_path: Path, nats: NatsServer, **overrides: object) -> AgentConfig:
    values: dict[str, object] = {
        "agent_id": new_agent_id(),
        "nats_url": nats.url,
        "work_dir": str(tmp_path / "work"),
        "storage_root": (tmp_path / "objects").as_uri(),
        "heartbeat_s": 0.2,
        "cancel_grace_s": 5.0,
    }
    values.update(overrides)
    return AgentConfig(**values)  # type: ignore[arg-type]


def stage_inputs(store: ObjectStore, code: dict[str, str] | None = None) -> tuple[str, str]:
    """Put a code archive and a data prefix into storage; returns (code_uri, data_uri)."""
    tag = uuid.uuid4().hex[:8]
    code_uri = f"s3://code/{tag}.tar.gz"
    data_uri = f"s3://datasets/{tag}"
    store.put_bytes(code_uri, code_tar(code or {"train.py": TRAIN_PY}))
    store.put_bytes(f"{data_uri}/numbers.txt", b"1 2 3\n")
    return code_uri, data_uri


def work(
    command: str,
    code_uri: str = "",
    data_uri: str = "",
    results_uri: str = "",
    framework: str = "pytorch",
    patterns: tuple[str, ...] = (),
) -> WorkAssignment:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    spec = RunSpec(
        command=command,
        framework=Framework(name=framework, version="2.13"),
        code_uri=code_uri,
        data_uri=data_uri,
        results_uri=results_uri,
        metric_patterns=[MetricPattern(regex=p) for p in patterns],
        hyperparameters={"lr": Value(number_value=0.01), "hidden": Value(number_value=64)},
    )
    return WorkAssignment(run_id=run_id, attempt=1, experiment_id="exp-1", spec=spec)


async def full_run(
    config: AgentConfig, store: ObjectStore, results_bucket: str
) -> tuple[WorkAssignment, list[AgentReport]]:
    code_uri, data_uri = stage_inputs(store)
    assignment = work(
        "python train.py --lr 0.01",
        code_uri=code_uri,
        data_uri=data_uri,
        results_uri=f"s3://{results_bucket}/digits/run-a",
        patterns=(r"step (?P<step>\d+) loss=(?P<loss>[0-9.]+)",),
    )
    async with running_agent(config) as agent:
        await agent.send_work(assignment)
        reports = await agent.until_terminal(assignment.run_id)
    return assignment, reports


def check_full_run(assignment: WorkAssignment, reports: list[AgentReport]) -> None:
    assert transitions(reports) == ["staging", "started", "uploading", "completed"], kinds(reports)
    # Output is stored before the terminal report, and only while the attempt is live.
    ks = kinds(reports)
    assert "logged" in ks and "metrics" in ks
    assert all(ks.index("staging") < i < ks.index("completed") for i, k in enumerate(ks) if k in ("logged", "metrics"))
    assert all(r.run_id == assignment.run_id and r.event_id for r in reports)
    assert len({r.event_id for r in reports}) == len(reports)

    stdout = texts(reports, LogStream.LOG_STREAM_STDOUT)
    assert stdout[:3] == [f"hello from {assignment.run_id} 1", "step 1 loss=0.5", "step 2 loss=0.25"]
    assert "data says 1 2 3" in stdout
    assert "hp 0.01 64 gpus=" in stdout
    # `python` in the command is the framework's interpreter (here the agent's own venv).
    (python_line,) = [line for line in stdout if line.startswith("python ")]
    assert Path(python_line.split(" ", 1)[1]).parent == Path(sys.executable).parent
    assert texts(reports, LogStream.LOG_STREAM_STDERR) == ["careful: stderr line"]
    agent_lines = " | ".join(texts(reports, LogStream.LOG_STREAM_AGENT))
    assert "staged 1 code files" in agent_lines and "1 data files" in agent_lines
    assert "exit status 0" in agent_lines
    assert "uploaded 2 result files" in agent_lines

    points = {(p.source, p.name, p.step): p.value for p in metric_points(reports)}
    assert points == {
        ("stdout", "loss", 1): 0.5,
        ("stdout", "loss", 2): 0.25,
        ("jsonl", "acc", 1): 0.75,
        ("jsonl", "acc", 2): 0.875,
    }
    completed = reports[-1].completed
    assert completed.attempt == 1 and completed.results_uri == assignment.spec.results_uri


def test_run_completes_with_file_storage(tmp_path: Path, nats_server: NatsServer) -> None:
    config = agent_config(tmp_path, nats_server)
    store = open_store(config.storage_root, None)
    assignment, reports = asyncio.run(full_run(config, store, "results"))
    check_full_run(assignment, reports)
    objects = tmp_path / "objects" / "results" / "digits" / "run-a"
    assert (objects / "model.txt").read_text() == "weights"
    assert (objects / "sub" / "info.json").exists()
    # A completed attempt leaves no work folder behind.
    assert list((tmp_path / "work").iterdir()) == []


def test_run_completes_with_s3_storage(tmp_path: Path, nats_server: NatsServer, moto_s3: MotoS3) -> None:
    config = agent_config(tmp_path, nats_server, storage_root=None, s3_endpoint_url=moto_s3.endpoint_url)
    store = open_store(None, moto_s3.endpoint_url)
    for bucket in ("code", "datasets", "results"):
        store.ensure_bucket(bucket)
    assignment, reports = asyncio.run(full_run(config, store, "results"))
    check_full_run(assignment, reports)
    # Read back with plain boto3, as any S3 user would.
    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint_url, region_name="us-east-1")
    body = s3.get_object(Bucket="results", Key="digits/run-a/model.txt")["Body"].read()
    assert body == b"weights"
    assert store.exists("s3://results/digits/run-a/sub/info.json")


def test_failing_command_reports_user_code_with_exit_status(tmp_path: Path, nats_server: NatsServer) -> None:
    config = agent_config(tmp_path, nats_server)
    assignment = work("echo starting; echo 'ValueError: bad shape' >&2; exit 3", results_uri="s3://results/x")

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            await agent.send_work(assignment)
            return await agent.until_terminal(assignment.run_id)

    reports = asyncio.run(scenario())
    assert transitions(reports) == ["staging", "started", "failed"]
    failed = reports[-1].failed
    assert failed.reason == FailureReason.FAILURE_REASON_USER_CODE
    assert failed.exit_code == 3
    assert "exit status 3" in failed.message and "ValueError: bad shape" in failed.message
    assert texts(reports, LogStream.LOG_STREAM_STDOUT) == ["starting"]
    # The failed attempt's folder is kept for a look.
    assert (tmp_path / "work" / assignment.run_id / "1" / "code").is_dir()


def test_cancel_stops_the_process_group(tmp_path: Path, nats_server: NatsServer) -> None:
    config = agent_config(tmp_path, nats_server, sandbox="none")  # the test reads the pids the run writes
    pid_file = tmp_path / "pids"
    # A shell that starts a child which ignores SIGTERM: SIGKILL after the grace must end both.
    command = (
        f"python -c 'import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)' & "
        f"echo $$ $! > {pid_file}; echo ready; wait"
    )
    assignment = work(command, framework="python")

    async def scenario() -> tuple[list[AgentReport], list[int], float]:
        async with running_agent(config) as agent:
            await agent.send_work(assignment)
            before = await agent.wait_for(assignment.run_id, "started")
            while not (pid_file.exists() and len(pid_file.read_text().split()) == 2):
                await asyncio.sleep(0.02)
            pids = [int(p) for p in pid_file.read_text().split()]
            t0 = asyncio.get_running_loop().time()
            await agent.cancel(assignment.run_id, 1, grace_seconds=1)
            after = await agent.until_terminal(assignment.run_id)
            return before + after, pids, asyncio.get_running_loop().time() - t0

    reports, pids, took = asyncio.run(scenario())
    assert transitions(reports) == ["staging", "started", "canceled"]
    assert reports[-1].canceled.attempt == 1
    assert took < 4.0  # grace 1 s, not the agent's default of 5 s
    for pid in pids:
        wait_until(lambda pid=pid: process_gone(pid), timeout=5, message=f"process {pid} still alive")


def test_cancel_of_unknown_attempt_is_ignored(tmp_path: Path, nats_server: NatsServer) -> None:
    config = agent_config(tmp_path, nats_server)
    assignment = work("echo fine", framework="python")

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            await agent.cancel("run-nobody", 7)
            await agent.send_work(assignment)
            return await agent.until_terminal(assignment.run_id)

    assert transitions(asyncio.run(scenario())) == ["staging", "started", "uploading", "completed"]


def test_unsupported_framework(tmp_path: Path, nats_server: NatsServer) -> None:
    config = agent_config(tmp_path, nats_server, frameworks={"pytorch": sys.executable})
    assignment = work("python train.py", framework="tensorflow")

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            await agent.send_work(assignment)
            return await agent.until_terminal(assignment.run_id)

    reports = asyncio.run(scenario())
    assert transitions(reports) == ["staging", "failed"]
    failed = reports[-1].failed
    assert failed.reason == FailureReason.FAILURE_REASON_UNSUPPORTED
    assert failed.message == f"agent {config.agent_id} offers frameworks [pytorch]; run asks for tensorflow 2.13"


def test_missing_code_is_a_staging_error_naming_the_uri(tmp_path: Path, nats_server: NatsServer) -> None:
    config = agent_config(tmp_path, nats_server)
    open_store(config.storage_root, None).ensure_bucket("code")
    assignment = work("python train.py", code_uri="s3://code/nope.tar.gz")

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            await agent.send_work(assignment)
            return await agent.until_terminal(assignment.run_id)

    reports = asyncio.run(scenario())
    assert transitions(reports) == ["staging", "failed"]
    failed = reports[-1].failed
    assert failed.reason == FailureReason.FAILURE_REASON_STAGING_ERROR
    assert "s3://code/nope.tar.gz" in failed.message


def test_shutdown_fails_running_attempts_and_heartbeats_name_them(tmp_path: Path, nats_server: NatsServer) -> None:
    config = agent_config(tmp_path, nats_server, cancel_grace_s=1.0, sandbox="none")
    pid_file = tmp_path / "pid"
    assignment = work(f"echo $$ > {pid_file}; exec sleep 60", framework="python")

    async def scenario() -> tuple[list[AgentReport], AgentHeartbeat, int]:
        async with running_agent(config) as agent:
            beats: asyncio.Queue[AgentHeartbeat] = asyncio.Queue()

            async def on_beat(msg: object) -> None:
                await beats.put(AgentHeartbeat.FromString(msg.data))  # type: ignore[attr-defined]

            await agent.nc.subscribe(bus.heartbeat_subject(agent.agent_id), cb=on_beat)
            await agent.send_work(assignment)
            reports = await agent.wait_for(assignment.run_id, "started")
            while True:
                beat = await asyncio.wait_for(beats.get(), timeout=5)
                if beat.attempts:
                    break
            while not pid_file.exists() or not pid_file.read_text().strip():
                await asyncio.sleep(0.02)
            await agent.stop_agent()
            reports += await agent.until_terminal(assignment.run_id)
            return reports, beat, int(pid_file.read_text())

    reports, beat, pid = asyncio.run(scenario())
    assert beat.agent_id == config.agent_id and list(beat.attempts) == [f"{assignment.run_id}:1"]
    assert transitions(reports) == ["staging", "started", "failed"]
    failed = reports[-1].failed
    assert failed.reason == FailureReason.FAILURE_REASON_AGENT_SHUTDOWN
    assert failed.message == "agent shutting down"
    wait_until(lambda: process_gone(pid), timeout=5, message=f"process {pid} still alive")


def test_one_slot_runs_one_attempt_at_a_time_and_starts_work_at_once(tmp_path: Path, nats_server: NatsServer) -> None:
    config = agent_config(tmp_path, nats_server, slots=1)
    first = work("sleep 0.3; echo first", framework="python")
    second = work("echo second", framework="python")

    async def scenario() -> tuple[list[tuple[str, str]], float]:
        async with running_agent(config) as agent:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await agent.send_work(first)
            await agent.send_work(second)
            order: list[tuple[str, str]] = []
            latency = -1.0
            while ("second", "completed") not in order:
                r = await agent.next_report()
                who = "first" if r.run_id == first.run_id else "second"
                order.append((who, str(r.WhichOneof("body"))))
                if order[-1] == ("first", "started"):
                    latency = loop.time() - t0
            return order, latency

    order, latency = asyncio.run(scenario())
    # The second WorkAssignment is only fetched once the first attempt has ended.
    assert order.index(("first", "completed")) < order.index(("second", "staging"))
    # Long-poll fetch: the idle agent starts work without a polling delay.
    assert 0 <= latency < 1.0, f"{latency:.3f}s from publish to RunStarted"


def test_cancel_for_work_still_queued_cancels_it_on_arrival(tmp_path: Path, nats_server: NatsServer) -> None:
    config = agent_config(tmp_path, nats_server, slots=1)
    busy = work("sleep 0.5", framework="python")
    queued = work("echo should never run", framework="python")

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            await agent.send_work(busy)
            await agent.wait_for(busy.run_id, "started")
            await agent.send_work(queued)  # waits in the stream: the only slot is busy
            await agent.cancel(queued.run_id, 1)
            return await agent.until_terminal(queued.run_id)

    reports = asyncio.run(scenario())
    assert transitions(reports) == ["canceled"]
    assert reports[0].canceled.attempt == 1


def test_reports_survive_a_nats_restart_in_order_and_once(tmp_path: Path, nats_server: NatsServer) -> None:
    config = agent_config(tmp_path, nats_server)
    assignment = work(
        "python -c 'import time\nfor i in range(25): print(i, flush=True); time.sleep(0.08)'", framework="python"
    )

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            await agent.send_work(assignment)
            reports = await agent.wait_for(assignment.run_id, "started")
            await asyncio.sleep(0.3)  # let some output go out first
            await asyncio.to_thread(nats_server.stop)
            await asyncio.sleep(0.8)  # the command keeps printing while NATS is down
            await asyncio.to_thread(nats_server.start)
            reports += await agent.until_terminal(assignment.run_id, timeout=30)
            return reports

    reports = asyncio.run(scenario())
    assert transitions(reports) == ["staging", "started", "uploading", "completed"]
    assert texts(reports, LogStream.LOG_STREAM_STDOUT) == [str(i) for i in range(25)]
    assert len({r.event_id for r in reports}) == len(reports)
