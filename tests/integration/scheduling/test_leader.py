"""Two `runyard server` replicas on one database: one leader, takeover on kill -9, never a double assignment."""

from __future__ import annotations

import itertools
import signal

import pytest

from runyard.v1 import common_pb2, run_service_pb2
from tests.integration.scheduling.helpers import (
    all_ended,
    attempts,
    manifest,
    overlapping,
    start_gpu_agents,
    stubs_at,
    submit,
    wait_until,
)
from tests.support.services import free_port
from tests.support.stack import Proc, Stack, Stubs

pytestmark = pytest.mark.integration
RS = common_pb2.RunState
RUNS = 16


def leads(proc: Proc) -> bool:
    return "became scheduler leader" in proc.output()


def test_the_backlog_drains_once_across_a_leader_kill(stack: Stack) -> None:
    first = stack.start_server()
    second = stack.start_server(port=free_port())
    second_endpoint = second.argv[second.argv.index("--listen") + 1]
    with stack.channel() as channel:
        stubs = Stubs(channel)
        start_gpu_agents(stack, stubs, {"gpu-a": "2xH100", "gpu-b": "2xH100"})
        wait_until("one replica to lead", lambda: leads(first) or leads(second), stack=stack)
        assert leads(first) != leads(second), "exactly one replica leads"
        exp = submit(stubs, manifest("backlog", "sleep 1", gpus=1, runs=RUNS))

        def runs_in(states: set[int]) -> int:
            runs = stubs.runs.ListRuns(run_service_pb2.ListRunsRequest(experiment_id=exp.id), timeout=10).runs
            return sum(1 for r in runs if r.state in states)

        wait_until("some runs to complete", lambda: runs_in({RS.RUN_STATE_COMPLETED}) >= 4, timeout=60, stack=stack)
    assert runs_in_queue_left(stack, exp.id) >= 4, "the leader dies mid-backlog"

    leader, survivor = (first, second) if leads(first) else (second, first)
    survivor_endpoint = second_endpoint if survivor is second else stack.endpoint
    leader.stop(signal.SIGKILL)
    wait_until("the other replica to take over", lambda: leads(survivor), timeout=30, stack=stack)

    channel, stubs = stubs_at(survivor_endpoint, stack.admin_key)
    with channel:
        wait_until("the backlog to drain", lambda: all_ended(stubs, [exp.id]), timeout=120, stack=stack)

    held = attempts(stack.database_url)  # raises if any attempt was assigned twice
    assert sorted(a.run_id for a in held) == sorted(r.id for r in exp.runs), "each run assigned exactly once"
    assert all(a.outcome == "RunCompleted" for a in held)
    for a, b in itertools.combinations(held, 2):
        if a.agent_id == b.agent_id and overlapping(a, b):
            assert not set(a.gpu_ids) & set(b.gpu_ids), f"{a.run_id} and {b.run_id} held a GPU at once"


def runs_in_queue_left(stack: Stack, experiment_id: str) -> int:
    with stack.channel() as channel:
        runs = (
            Stubs(channel).runs.ListRuns(run_service_pb2.ListRunsRequest(experiment_id=experiment_id), timeout=10).runs
        )
    return sum(1 for r in runs if r.state == RS.RUN_STATE_QUEUED)
