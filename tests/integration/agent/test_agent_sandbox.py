"""The process runtime under bwrap: stops keep their grace, exit statuses read as without it, runs die with the agent.

bwrap is the command's process-group leader, and a signal to the whole group would kill it at
once, which SIGKILLs the sandbox: the runtime signals the command instead (see
runyard.agent.runtime_local). These tests fail when it does not.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from runyard.v1.agent_pb2 import AgentReport
from runyard.v1.common_pb2 import FailureReason, LogStream
from tests.integration.agent.harness import running_agent, texts, transitions
from tests.integration.agent.test_agent_runs import agent_config, work
from tests.integration.agent.test_sandbox_attacks import World, scene
from tests.support.services import NatsServer, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

# The shell traps SIGTERM (a run saving its checkpoint); its child ignores it and needs the SIGKILL.
GRACEFUL = (
    "trap 'echo got TERM; exit 7' TERM; "
    "python -c 'import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)' & "
    "echo ready; wait"
)
STUBBORN = (
    "exec python -c 'import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    'print("ready", flush=True); time.sleep(60)\''
)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def held_pgid(work_root: Path, run_id: str) -> int:
    try:
        return int(json.loads((work_root / ".attempts" / f"{run_id}~1.json").read_text()).get("pgid", 0))
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize("command, graceful", [(GRACEFUL, True), (STUBBORN, False)])
def test_a_cancel_reaches_the_sandboxed_command_and_kills_what_is_left_after_the_grace(
    tmp_path: Path, nats_server: NatsServer, command: str, graceful: bool
) -> None:
    config = agent_config(tmp_path, nats_server, sandbox="bwrap")
    assignment = work(command, framework="python")
    work_root = Path(config.work_dir).resolve()

    async def scenario() -> tuple[list[AgentReport], int, float]:
        async with running_agent(config) as agent:
            await agent.send_work(assignment)
            reports = await agent.wait_for(assignment.run_id, "started")
            pgid = await asyncio.to_thread(
                wait_until, lambda: held_pgid(work_root, assignment.run_id), 10, "the attempt's record"
            )
            # "ready" printed: the trap (or the signal disposition) is set.
            while "ready" not in texts(reports, LogStream.LOG_STREAM_STDOUT):
                report = await agent.next_report(timeout=10)
                if report.run_id == assignment.run_id:
                    reports.append(report)
            t0 = time.monotonic()
            await agent.cancel(assignment.run_id, 1, grace_seconds=1)
            reports += await agent.until_terminal(assignment.run_id)
            return reports, pgid, time.monotonic() - t0

    reports, pgid, took = asyncio.run(scenario())
    assert transitions(reports) == ["staging", "started", "canceled"]
    stdout = texts(reports, LogStream.LOG_STREAM_STDOUT)
    if graceful:
        assert "got TERM" in stdout, stdout  # SIGTERM reached the command inside the sandbox
        assert took < 1.0, "the command ended on SIGTERM: no wait for the grace"
    else:
        assert 0.9 < took < 4.0, took  # SIGKILL after the 1 s grace
    assert "killed by signal SIGKILL" in reports[-1].canceled.reason or graceful
    wait_until(lambda: not group_alive(pgid), 5, f"process group {pgid} still alive")


def test_exit_statuses_read_the_same_as_without_the_sandbox(tmp_path: Path, nats_server: NatsServer) -> None:
    config = agent_config(tmp_path, nats_server, sandbox="bwrap")
    exits = work("echo bye; exit 3", framework="python")
    killed = work("kill -KILL $$", framework="python")

    async def scenario() -> tuple[list[AgentReport], list[AgentReport]]:
        async with running_agent(config) as agent:
            await agent.send_work(exits)
            await agent.send_work(killed)
            return await agent.until_terminal(exits.run_id), await agent.until_terminal(killed.run_id)

    first, second = asyncio.run(scenario())
    assert first[-1].failed.reason == FailureReason.FAILURE_REASON_USER_CODE
    assert (first[-1].failed.exit_code, first[-1].failed.message) == (3, "command failed with exit status 3")
    assert second[-1].failed.exit_code == 137
    assert second[-1].failed.message.startswith("command failed with killed by signal SIGKILL")


def test_the_environment_names_the_folders_as_the_run_sees_them(tmp_path: Path, nats_server: NatsServer) -> None:
    config = agent_config(tmp_path, nats_server, sandbox="bwrap")
    command = (
        'echo "$DATA_DIR $RESULT_DIR $RUNYARD_METRICS_FILE $HOME $TMPDIR $(pwd)"; '
        'echo result > "$RESULT_DIR/r.txt"; echo home > "$HOME/h"; echo tmp > "$TMPDIR/t"; '
        'python -c "import runyard; runyard.log(step=1, acc=0.5)"; env | sort | cut -d= -f1 | tr "\\n" " "'
    )
    assignment = work(command, framework="python", results_uri="s3://results/sandbox/env")

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            await agent.send_work(assignment)
            return await agent.until_terminal(assignment.run_id)

    reports = asyncio.run(scenario())
    assert transitions(reports) == ["staging", "started", "uploading", "completed"], reports[-1]
    stdout = texts(reports, LogStream.LOG_STREAM_STDOUT)
    assert stdout[0] == (
        "/runyard/data /runyard/result /runyard/output/metrics.jsonl /runyard/home /runyard/tmp /runyard/code"
    )
    names = set(stdout[1].split())
    assert "RUNYARD_API_KEY" not in names and not any(n.startswith("AWS_") for n in names), names
    points = [(p.source, p.name, p.value) for r in reports if r.HasField("metrics") for p in r.metrics.points]
    assert points == [("jsonl", "acc", 0.5)]


def test_a_killed_agent_takes_its_sandboxed_runs_with_it(tmp_path: Path, nats_server: NatsServer) -> None:
    """--die-with-parent: bwrap and everything in the sandbox die with the agent (SIGKILL, no guard needed)."""
    world = World(tmp_path, nats_server, "bwrap")

    async def scenario() -> tuple[int, float]:
        async with scene(world) as s:
            assert group_alive(s.victim_pgid)
            s.agent.send_signal(signal.SIGKILL)
            t0 = time.monotonic()
            await asyncio.to_thread(wait_until, lambda: not group_alive(s.victim_pgid), 5, "the run outlived its agent")
            return s.victim_pgid, time.monotonic() - t0

    _, took = asyncio.run(scenario())
    assert took < 2.0
