"""Checkpoints on a real agent over a real NATS with real storage (moto S3; files where a failure is staged).

The run writes $CHECKPOINT_DIR (in the bwrap sandbox when this host has it);
the agent stores it under <results_uri>/checkpoints/ while the command runs
and after it ends, manifest last, then reports RunCheckpointed; the next
attempt gets it back, digest-checked, before its command starts.

The test steers the run through dot-files it drops in the attempt's host
checkpoint folder (the agent never stores dot-names): the run waits for them
instead of sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from runyard.agent.config import AgentConfig
from runyard.objectstore import ObjectStore, open_store
from runyard.v1.agent_pb2 import AgentReport, WorkAssignment
from runyard.v1.common_pb2 import Checkpoint, FailureReason, LogStream
from tests.integration.agent.harness import AgentHarness, code_tar, kinds, running_agent, texts, transitions
from tests.integration.agent.test_agent_runs import agent_config, work
from tests.support.services import MotoS3, NatsServer

pytestmark = pytest.mark.integration

STEP = r"step (?P<step>\d+) loss=(?P<loss>[0-9.]+)"

CKPT_PY = """\
import os, signal, sys, time
ck = os.environ["CHECKPOINT_DIR"]

def save(name, text):
    tmp = os.path.join(ck, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(ck, name))

def wait_for(name):
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(ck, name)):
        if time.monotonic() > deadline:
            sys.exit("gave up waiting for " + name)
        time.sleep(0.02)

mode = sys.argv[1]
print("env", os.environ["RUNYARD_ATTEMPT"], os.environ["RUNYARD_RESUMED"],
      os.environ.get("RUNYARD_CHECKPOINT_STEP", "-"), ck, flush=True)
if mode == "once":
    os.makedirs(os.path.join(ck, "sub"), exist_ok=True)
    save("sub/model.bin", "weights-3")
    save("state.json", '{"step": 3}')
    open(os.path.join(ck, ".hidden"), "w").write("not stored")
    open(os.path.join(ck, "half.tmp"), "w").write("not stored")
    open(os.path.join(ck, "big.partial"), "w").write("not stored")
    os.symlink("/etc/passwd", os.path.join(ck, "link"))
    print("step 3 loss=0.5", flush=True)
elif mode == "twice":
    save("state.json", "v1")
    print("step 1 loss=0.9", flush=True)
    wait_for(".go")
    save("state.json", "v2 longer")
    print("step 2 loss=0.8", flush=True)
    wait_for(".done")
elif mode == "term":
    def on_term(signum, frame):
        save("state.json", "saved on SIGTERM")
        sys.exit(143)
    signal.signal(signal.SIGTERM, on_term)
    save("state.json", "v1")
    print("step 5 loss=0.7", flush=True)
    while True:
        time.sleep(0.05)
elif mode == "resume":
    for top, _dirs, names in sorted(os.walk(ck)):
        for name in sorted(names):
            path = os.path.join(top, name)
            print("restored", os.path.relpath(path, ck), open(path).read(), flush=True)
elif mode == "fail":
    with open(os.path.join(os.environ["RESULT_DIR"], "partial.txt"), "w") as f:
        f.write("half a model")
    print("going down", flush=True)
    sys.exit(3)
"""


def s3_config(tmp_path: Path, nats: NatsServer, moto: MotoS3, **overrides: object) -> AgentConfig:
    """Checkpoints every 60 s unless asked: a test of the last one alone never races a periodic one."""
    values: dict[str, object] = {
        "storage_root": None,
        "s3_endpoint_url": moto.endpoint_url,
        "checkpoint_interval_s": 60.0,
    }
    values.update(overrides)
    return agent_config(tmp_path, nats, **values)


def ckpt_work(store: ObjectStore, mode: str, results_uri: str, attempt: int = 1) -> WorkAssignment:
    code_uri = f"s3://code/ckpt-{hashlib.sha256(results_uri.encode()).hexdigest()[:8]}-{mode}.tar.gz"
    store.put_bytes(code_uri, code_tar({"ckpt.py": CKPT_PY}))
    assignment = work(f"python ckpt.py {mode}", code_uri=code_uri, results_uri=results_uri, patterns=(STEP,))
    assignment.attempt = attempt
    return assignment


def s3_store(moto: MotoS3) -> ObjectStore:
    store = open_store(None, moto.endpoint_url)
    store.ensure_bucket("code")
    store.ensure_bucket("results")
    return store


def checkpoints(reports: list[AgentReport]) -> list[Checkpoint]:
    return [r.checkpointed.checkpoint for r in reports if r.HasField("checkpointed")]


def host_checkpoint_dir(config: AgentConfig, assignment: WorkAssignment) -> Path:
    return Path(config.work_dir) / assignment.run_id / str(assignment.attempt) / "checkpoint"


def manifest(store: ObjectStore, checkpoint: Checkpoint) -> dict[str, object]:
    data = store.get_bytes(checkpoint.manifest_uri)
    assert hashlib.sha256(data).hexdigest() == checkpoint.manifest_sha256
    loaded: dict[str, object] = json.loads(data)
    return loaded


def stored_file(store: ObjectStore, results_uri: str, checkpoint: Checkpoint, rel: str) -> bytes:
    return store.get_bytes(f"{results_uri}/checkpoints/{checkpoint.checkpoint_id}/{rel}")


async def one_run(config: AgentConfig, assignment: WorkAssignment) -> list[AgentReport]:
    async with running_agent(config) as agent:
        await agent.send_work(assignment)
        return await agent.until_terminal(assignment.run_id)


def test_a_checkpoint_is_stored_with_its_digests_and_reported_before_the_end(
    tmp_path: Path, nats_server: NatsServer, moto_s3: MotoS3
) -> None:
    store = s3_store(moto_s3)
    results = "s3://results/ck/once"
    config = s3_config(tmp_path, nats_server, moto_s3)
    assignment = ckpt_work(store, "once", results)
    reports = asyncio.run(one_run(config, assignment))
    assert transitions(reports) == ["staging", "started", "uploading", "checkpointed", "completed"], kinds(reports)
    [ck] = checkpoints(reports)
    assert (ck.checkpoint_id, ck.run_id, ck.attempt, ck.step) == ("1-1", assignment.run_id, 1, 3)
    assert ck.manifest_uri == f"{results}/checkpoints/1-1.json"
    assert (ck.files, ck.size_bytes) == (2, len("weights-3") + len('{"step": 3}'))
    assert ck.time_us > 0
    body = manifest(store, ck)
    assert body == {
        "checkpoint_id": "1-1",
        "run_id": assignment.run_id,
        "attempt": 1,
        "step": 3,
        "files": [
            {"path": "state.json", "size": 11, "sha256": hashlib.sha256(b'{"step": 3}').hexdigest()},
            {"path": "sub/model.bin", "size": 9, "sha256": hashlib.sha256(b"weights-3").hexdigest()},
        ],
    }
    # Dot-names, .tmp/.partial names and links are never stored.
    stored = sorted(i.uri.removeprefix(f"{results}/checkpoints/") for i in store.list(f"{results}/checkpoints/"))
    assert stored == ["1-1.json", "1-1/state.json", "1-1/sub/model.bin"]
    assert stored_file(store, results, ck, "sub/model.bin") == b"weights-3"
    stdout = texts(reports, LogStream.LOG_STREAM_STDOUT)
    assert stdout[0].startswith("env 1 0 - /") and stdout[0].endswith("/checkpoint"), stdout
    agent_lines = " | ".join(texts(reports, LogStream.LOG_STREAM_AGENT))
    assert "checkpoint 1-1 stored (step 3, 2 files" in agent_lines
    # Every attempt's output goes up as attempts/<n>/output.log; a completed one's results stay at the top.
    log_text = store.get_bytes(f"{results}/attempts/1/output.log").decode()
    assert "step 3 loss=0.5" in log_text and "[runyard] checkpoint 1-1 stored" in log_text
    assert not store.exists(f"{results}/attempts/1/state.json")


def test_checkpoints_are_taken_while_the_command_runs_when_the_folder_changed(
    tmp_path: Path, nats_server: NatsServer, moto_s3: MotoS3
) -> None:
    store = s3_store(moto_s3)
    results = "s3://results/ck/twice"
    config = s3_config(tmp_path, nats_server, moto_s3, checkpoint_interval_s=0.5)
    assignment = ckpt_work(store, "twice", results)

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            await agent.send_work(assignment)
            got = await agent.wait_for(assignment.run_id, "checkpointed")
            folder = host_checkpoint_dir(config, assignment)
            (folder / ".go").write_text("")
            got += await agent.wait_for(assignment.run_id, "checkpointed")
            assert "started" in kinds(got) and "uploading" not in kinds(got), "both while the command runs"
            (folder / ".done").write_text("")
            return got + await agent.until_terminal(assignment.run_id)

    reports = asyncio.run(scenario())
    first, second = checkpoints(reports)
    assert (first.checkpoint_id, first.step, second.checkpoint_id, second.step) == ("1-1", 1, "1-2", 2)
    assert stored_file(store, results, first, "state.json") == b"v1"
    assert stored_file(store, results, second, "state.json") == b"v2 longer"
    assert first.manifest_sha256 != second.manifest_sha256
    # Nothing changed after the second one: the end takes no third.
    assert transitions(reports)[-1] == "completed" and len(checkpoints(reports)) == 2


def test_a_canceled_run_gets_a_last_checkpoint_after_its_sigterm_before_the_cancel_report(
    tmp_path: Path, nats_server: NatsServer, moto_s3: MotoS3
) -> None:
    store = s3_store(moto_s3)
    results = "s3://results/ck/term"
    config = s3_config(tmp_path, nats_server, moto_s3)
    assignment = ckpt_work(store, "term", results)

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            await agent.send_work(assignment)
            got = await agent.wait_for(assignment.run_id, "metrics")
            await agent.cancel(assignment.run_id, 1, grace_seconds=10)
            return got + await agent.until_terminal(assignment.run_id)

    reports = asyncio.run(scenario())
    assert transitions(reports)[-2:] == ["checkpointed", "canceled"], kinds(reports)
    [ck] = checkpoints(reports)
    assert (ck.checkpoint_id, ck.step) == ("1-1", 5)
    assert stored_file(store, results, ck, "state.json") == b"saved on SIGTERM"
    # A canceled attempt's output is stored too.
    assert "step 5 loss=0.7" in store.get_bytes(f"{results}/attempts/1/output.log").decode()


def test_the_next_attempt_starts_from_the_checkpoint_and_its_command_is_told(
    tmp_path: Path, nats_server: NatsServer, moto_s3: MotoS3
) -> None:
    store = s3_store(moto_s3)
    results = "s3://results/ck/resume"
    config = s3_config(tmp_path, nats_server, moto_s3)

    async def scenario() -> tuple[list[AgentReport], list[AgentReport]]:
        async with running_agent(config) as agent:
            first = ckpt_work(store, "once", results)
            await agent.send_work(first)
            ended = await agent.until_terminal(first.run_id)
            [ck] = checkpoints(ended)
            second = ckpt_work(store, "resume", results, attempt=2)
            second.run_id = first.run_id
            second.resume_from.CopyFrom(ck)
            await agent.send_work(second)
            return ended, await agent.until_terminal(second.run_id)

    _first, reports = asyncio.run(scenario())
    assert transitions(reports) == ["staging", "started", "uploading", "completed"], kinds(reports)
    stdout = texts(reports, LogStream.LOG_STREAM_STDOUT)
    assert stdout[0].startswith("env 2 1 3 "), stdout
    assert stdout[1:] == ['restored state.json {"step": 3}', "restored sub/model.bin weights-3"], stdout
    agent_lines = " | ".join(texts(reports, LogStream.LOG_STREAM_AGENT))
    assert "resumed from checkpoint 1-1 (step 3, 2 files, " in agent_lines, agent_lines
    assert checkpoints(reports) == [], "the restored folder, unchanged, is no new checkpoint"


@pytest.mark.parametrize("damage", ["file", "manifest", "missing"])
def test_a_damaged_checkpoint_ends_the_attempt_staging_error_naming_it(
    tmp_path: Path, nats_server: NatsServer, moto_s3: MotoS3, damage: str
) -> None:
    store = s3_store(moto_s3)
    results = f"s3://results/ck/damaged-{damage}"
    config = s3_config(tmp_path, nats_server, moto_s3)

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            first = ckpt_work(store, "once", results)
            await agent.send_work(first)
            [ck] = checkpoints(await agent.until_terminal(first.run_id))
            if damage == "file":
                store.put_bytes(f"{results}/checkpoints/1-1/state.json", b'{"step": 4}')  # same size, other bytes
            elif damage == "manifest":
                store.put_bytes(ck.manifest_uri, store.get_bytes(ck.manifest_uri) + b" ")
            else:
                store.put_bytes(f"{results}/checkpoints/1-1/sub/model.bin", b"")
                ck.manifest_uri = f"{results}/checkpoints/1-9.json"
            second = ckpt_work(store, "resume", results, attempt=2)
            second.run_id = first.run_id
            second.resume_from.CopyFrom(ck)
            await agent.send_work(second)
            return await agent.until_terminal(second.run_id)

    reports = asyncio.run(scenario())
    assert transitions(reports) == ["staging", "failed"], kinds(reports)
    failed = reports[-1].failed
    assert failed.reason == FailureReason.FAILURE_REASON_STAGING_ERROR
    assert "checkpoint 1-1" in failed.message, failed.message
    assert "restored" not in " ".join(texts(reports, LogStream.LOG_STREAM_STDOUT)), "the command never ran"


def test_a_failed_attempt_uploads_its_results_and_output_under_attempts(
    tmp_path: Path, nats_server: NatsServer, moto_s3: MotoS3
) -> None:
    store = s3_store(moto_s3)
    results = "s3://results/ck/fail"
    config = s3_config(tmp_path, nats_server, moto_s3)
    reports = asyncio.run(one_run(config, ckpt_work(store, "fail", results)))
    assert transitions(reports) == ["staging", "started", "failed"], kinds(reports)
    assert reports[-1].failed.reason == FailureReason.FAILURE_REASON_USER_CODE
    assert store.get_bytes(f"{results}/attempts/1/partial.txt") == b"half a model"
    output = store.get_bytes(f"{results}/attempts/1/output.log").decode()
    assert "going down" in output and "[runyard] command failed with exit status 3" in output, output
    assert not store.exists(f"{results}/partial.txt"), "a failed attempt's results are not the run's results"


def test_a_checkpoint_whose_manifest_was_never_written_is_never_reported_and_the_previous_one_restores(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    # File storage: a folder where the second manifest would go makes its write fail after its files.
    config = agent_config(tmp_path, nats_server, checkpoint_interval_s=0.5)
    store = open_store(config.storage_root, None)
    results = "s3://results/ck/half"

    async def scenario() -> tuple[list[AgentReport], list[AgentReport]]:
        async with running_agent(config) as agent:
            first = ckpt_work(store, "twice", results)
            await agent.send_work(first)
            got = await agent.wait_for(first.run_id, "checkpointed")
            blocker = tmp_path / "objects" / "results" / "ck" / "half" / "checkpoints" / "1-2.json"
            blocker.mkdir(parents=True)
            (blocker / "x").write_text("")
            folder = host_checkpoint_dir(config, first)
            (folder / ".go").write_text("")
            got += await wait_for_line(agent, first.run_id, "checkpoint not stored")
            (folder / ".done").write_text("")
            got += await agent.until_terminal(first.run_id)
            [ck1, *_] = checkpoints(got)
            second = ckpt_work(store, "resume", results, attempt=2)
            second.run_id = first.run_id
            second.resume_from.CopyFrom(ck1)
            await agent.send_work(second)
            return got, await agent.until_terminal(second.run_id)

    first_reports, reports = asyncio.run(scenario())
    ids = [c.checkpoint_id for c in checkpoints(first_reports)]
    assert ids[0] == "1-1" and "1-2" not in ids, ids
    # The half-written one's files are there; without its manifest it was never reported.
    assert store.get_bytes(f"{results}/checkpoints/1-2/state.json") == b"v2 longer"
    assert transitions(reports) == ["staging", "started", "uploading", "completed"], kinds(reports)
    assert "restored state.json v1" in texts(reports, LogStream.LOG_STREAM_STDOUT)


async def wait_for_line(agent: AgentHarness, run_id: str, text: str, timeout: float = 15.0) -> list[AgentReport]:
    got: list[AgentReport] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while not any(text in t for t in texts(got, LogStream.LOG_STREAM_AGENT)):
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"no agent line {text!r} within {timeout}s; got {kinds(got)}"
        got += await agent.wait_for(run_id, "logged", timeout=left)
    return got


def test_an_agent_shutting_down_takes_the_last_checkpoint_before_it_reports_the_end(
    tmp_path: Path, nats_server: NatsServer, moto_s3: MotoS3
) -> None:
    store = s3_store(moto_s3)
    results = "s3://results/ck/shutdown"
    config = s3_config(tmp_path, nats_server, moto_s3)
    assignment = ckpt_work(store, "term", results)

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            await agent.send_work(assignment)
            got = await agent.wait_for(assignment.run_id, "metrics")
            agent.stop.set()  # the agent stops: SIGTERM, grace, the last checkpoint, then AGENT_SHUTDOWN
            got += await agent.until_terminal(assignment.run_id)
            await asyncio.wait_for(agent.task, timeout=30)
            return got

    reports = asyncio.run(scenario())
    assert transitions(reports)[-2:] == ["checkpointed", "failed"], kinds(reports)
    assert reports[-1].failed.reason == FailureReason.FAILURE_REASON_AGENT_SHUTDOWN
    [ck] = checkpoints(reports)
    assert stored_file(store, results, ck, "state.json") == b"saved on SIGTERM"
