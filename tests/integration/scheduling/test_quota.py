"""A free account (1 GPU) runs one GPU run at a time; the rest wait, saying why, and start in order."""

from __future__ import annotations

import itertools

import pytest

from runyard.v1 import common_pb2, resources_pb2, run_service_pb2
from tests.integration.api.helpers import watch_all
from tests.integration.scheduling.helpers import (
    all_ended,
    attempts,
    create_account,
    manifest,
    peak_gpus_by_account,
    start_gpu_agents,
    stubs_at,
    submit,
    wait_until,
)
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration
RS = common_pb2.RunState


def test_a_free_account_holds_one_gpu_at_a_time_and_its_runs_wait_for_quota_in_order(stack: Stack) -> None:
    stack.start_server()
    with stack.channel() as admin_channel:
        admin = Stubs(admin_channel)
        start_gpu_agents(stack, admin, {"gpu-a": "2xH100", "gpu-b": "2xH100"})
        key = create_account(admin, "free", gpu_quota=1)
    channel, user = stubs_at(stack.endpoint, key)
    with channel:
        exp = submit(user, manifest("five", "echo run ${i}; sleep 0.5", gpus=1, runs=5))
        run_ids = [r.id for r in sorted(exp.runs, key=lambda r: r.index)]

        # While the first run holds the account's GPU, the others say they wait for quota, in order.
        def waiting() -> list[resources_pb2.Run] | None:
            runs = user.runs.ListRuns(run_service_pb2.ListRunsRequest(experiment_id=exp.id), timeout=10).runs
            queued = [r for r in runs if r.state == RS.RUN_STATE_QUEUED]
            holding = [r for r in runs if r.state in (RS.RUN_STATE_STAGING, RS.RUN_STATE_RUNNING)]
            return queued if len(holding) == 1 and len(queued) >= 3 else None

        queued = wait_until("one run holding the GPU while the others queue", waiting, stack=stack)
        for expected_position, run in enumerate(sorted(queued, key=lambda r: r.index), start=1):
            assert "quota" in run.waiting_reason, run.waiting_reason
            assert "free" in run.waiting_reason and "1 of 1 GPU" in run.waiting_reason
            assert run.queue_position == expected_position
        one = user.runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_ids[-1]), timeout=10).run
        if one.state == RS.RUN_STATE_QUEUED:
            assert "quota" in one.waiting_reason and one.queue_position >= 1

        # WatchRun says where the last run stands while it waits, and the place only improves.
        updates = watch_all(user, run_ids[-1], queue=True, timeout=120)
        told = [u.queue for u in updates if u.HasField("queue")]
        assert told, "a queued run's watch says why it waits"
        assert all("quota" in q.reason for q in told)
        places = [q.position for q in told]
        assert places == sorted(places, reverse=True) and places[-1] >= 1
        assert updates[-1].status.state == RS.RUN_STATE_COMPLETED

        wait_until("every run to end", lambda: all_ended(user, [exp.id]), timeout=120, stack=stack)

    held = [a for a in attempts(stack.database_url) if a.account_id == "free"]
    assert peak_gpus_by_account(held) == {"free": 1}, "the free account never held 2 GPUs at once"
    assert [a.run_id for a in held] == run_ids, "one attempt each, assigned in submission order"
    assert all(a.outcome == "RunCompleted" for a in held)
    ends = sorted(held, key=lambda a: a.end or 0)
    assert [a.run_id for a in ends] == run_ids, "completed in submission order"
    for before, after in itertools.pairwise(held):
        assert before.end is not None and before.end < after.start, "the next run starts after the last ends"
