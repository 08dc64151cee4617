"""Regression tests of issue 9, "kill -9 of an agent loses or doubles runs", and of an agent cut off from NATS.

Real processes (server, agents), PostgreSQL and a NATS of the test's own; short timeouts and leases.
What the runs did is judged from their own notes (ticker.py), what was billed and held from the log.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from runyard.config import pid_alive
from runyard.v1 import admin_service_pb2, common_pb2, run_service_pb2
from tests.integration.liveness import conftest
from tests.integration.liveness.records import (
    overlaps_of_a_run,
    read_records,
    requeue_messages,
    shared_gpus,
    ticker_command,
)
from tests.integration.scheduling.helpers import all_ended, manifest, submit, wait_until
from tests.support.services import NatsServer
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration
RS = common_pb2.RunState

AGENT_TIMEOUT_S = 4
LEASE_S = conftest.LEASE_S  # the agent stops what it cannot vouch for after 4 s, killed 1 s later at most
# Unsandboxed: the ticker (a file of the tests) writes its notes, with its host pid, outside its run's folders.
AGENT_FLAGS = ("--gpus", "2xH100", "--cancel-grace", "1", "--sandbox", "none")


def runs_of(stubs: Stubs, experiment_id: str) -> list:  # type: ignore[type-arg]
    return list(stubs.runs.ListRuns(run_service_pb2.ListRunsRequest(experiment_id=experiment_id), timeout=10).runs)


def wait_registered(stubs: Stubs, agent_ids: list[str], stack: Stack) -> None:
    def registered() -> bool:
        agents = stubs.admin.ListAgents(admin_service_pb2.ListAgentsRequest(), timeout=10).agents
        return {a.id for a in agents if a.alive and a.gpus} >= set(agent_ids)

    wait_until("the agents to register their GPUs", registered, stack=stack)


def start(stack: Stack, stubs: Stubs, records: Path, seconds: float) -> tuple[str, list[int]]:
    """One agent with 2 GPUs, two runs of the ticker on it; returns the experiment and the runs' first pids."""
    stack.start_agent("gpu-a", 2, *AGENT_FLAGS)
    wait_registered(stubs, ["gpu-a"], stack)
    exp = submit(
        stubs, manifest("liveness", ticker_command(seconds, records), gpus=1, runs=2, extra="max_restarts: 3\n")
    )

    def both_running() -> list[int] | None:
        lived = read_records(records)
        first = [a.pid for a in lived.values() if a.attempt == 1]
        return first if len(first) == 2 else None

    return exp.id, wait_until("both runs to start", both_running, timeout=60, stack=stack)


def test_an_agent_killed_and_back_within_its_timeout_leaves_no_run_running_forever(
    stack: Stack, tmp_path: Path
) -> None:
    """On the old main its runs stayed RUNNING (billed, GPUs held) for good; now they are re-run at once."""
    records = tmp_path / "records.txt"
    stack.start_server(agent_timeout=str(AGENT_TIMEOUT_S))
    with stack.channel() as channel:
        stubs = Stubs(channel)
        experiment_id, pids = start(stack, stubs, records, seconds=30)
        agent = stack.agents[-1]
        agent.stop(signal.SIGKILL)
        stack.start_agent("gpu-a", 2, *AGENT_FLAGS)  # back well within the agent timeout

        def second_attempts_running() -> bool:
            runs = runs_of(stubs, experiment_id)
            return all(r.attempt >= 2 and r.state == RS.RUN_STATE_RUNNING for r in runs)

        wait_until("the runs to run again (second attempts)", second_attempts_running, timeout=30, stack=stack)
        # Not at the end of the lease: the restarted agent ended its orphans and reported them.
        why = requeue_messages(stack.database_url)
        assert set(why.values()) == {"the agent restarted; the attempt's processes were ended"}, why
        for pid in pids:
            assert not pid_alive(pid), f"the first attempt's process {pid} outlived its agent"
    lived = read_records(records)
    assert not overlaps_of_a_run(lived)
    assert not shared_gpus(lived)


def test_an_agent_back_after_its_timeout_never_runs_a_run_twice_at_once(stack: Stack, tmp_path: Path) -> None:
    """On the old main the runs were re-queued at the timeout while their orphans ran on: the same run twice."""
    records = tmp_path / "records.txt"
    stack.start_server(agent_timeout=str(AGENT_TIMEOUT_S))
    with stack.channel() as channel:
        stubs = Stubs(channel)
        experiment_id, pids = start(stack, stubs, records, seconds=10)
        stack.agents[-1].stop(signal.SIGKILL)
        killed_at, killed_wall = time.monotonic(), time.time()
        # Down past the agent timeout, back before the lease ends; then the runs are re-run and complete.
        wait_until("the agent timeout", lambda: time.monotonic() - killed_at > AGENT_TIMEOUT_S + 1, timeout=10)
        stack.start_agent("gpu-a", 2, *AGENT_FLAGS)
        wait_until("the experiment to end", lambda: all_ended(stubs, [experiment_id]), timeout=60, stack=stack)
        runs = runs_of(stubs, experiment_id)
        assert [RS.Name(r.state) for r in runs] == ["RUN_STATE_COMPLETED"] * 2
    lived = read_records(records)
    assert not overlaps_of_a_run(lived), overlaps_of_a_run(lived)
    assert not shared_gpus(lived)
    assert all(any(a.run_id == r.id and a.ended for a in lived.values()) for r in runs)
    # The orphans died with their agent (their guards ended them within the kill grace of 1 s).
    orphans = [a for a in lived.values() if a.pid in pids]
    assert orphans and all(a.last < killed_wall + 2.5 for a in orphans), [a.last - killed_wall for a in orphans]


def test_an_agent_cut_off_from_nats_past_its_lease_stops_its_runs_itself(
    stack: Stack, tmp_path: Path, nats_server: NatsServer
) -> None:
    """On the old main the runs went on without the control plane, which re-queued them at the timeout."""
    records = tmp_path / "records.txt"
    stack.start_server(agent_timeout=str(AGENT_TIMEOUT_S))
    with stack.channel() as channel:
        stubs = Stubs(channel)
        experiment_id, pids = start(stack, stubs, records, seconds=12)
        nats_server.stop()
        cut_at = time.monotonic()
        # Half the lease without contact, then SIGTERM; SIGKILL within a quarter lease more.
        wait_until(
            "the agent to stop its runs itself",
            lambda: not any(pid_alive(p) for p in pids),
            timeout=LEASE_S,
            stack=stack,
        )
        assert stack.agents[-1].alive(), "the agent itself goes on"
        stopped_after = time.monotonic() - cut_at
        assert stopped_after < LEASE_S * 0.75 + 1, f"runs stopped {stopped_after:.1f}s after the cut"
        nats_server.start()
        wait_until("the experiment to end", lambda: all_ended(stubs, [experiment_id]), timeout=90, stack=stack)
        runs = runs_of(stubs, experiment_id)
        assert [RS.Name(r.state) for r in runs] == ["RUN_STATE_COMPLETED"] * 2
        assert all(r.attempt >= 2 for r in runs)
    lived = read_records(records)
    assert not overlaps_of_a_run(lived), overlaps_of_a_run(lived)
    assert not shared_gpus(lived)
