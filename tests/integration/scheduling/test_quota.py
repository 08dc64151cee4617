"""A free account (1 GPU) runs one GPU run at a time; the rest wait, saying why, and start in order."""

from __future__ import annotations

import itertools

import grpc
import pytest

from runyard.v1 import admin_service_pb2, common_pb2, experiment_service_pb2, resources_pb2, run_service_pb2
from tests.integration.api.helpers import watch_all
from tests.integration.scheduling.helpers import (
    TEST_STORAGE,
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


def test_a_cap_on_queued_runs_refuses_what_would_exceed_it_and_stores_nothing(stack: Stack) -> None:
    stack.start_server()
    with stack.channel() as admin_channel:
        admin = Stubs(admin_channel)
        admin.admin.CreateAccount(
            admin_service_pb2.CreateAccountRequest(
                account_id="capped", name="capped", gpu_quota=1, max_queued_runs=3, storage_prefixes=TEST_STORAGE
            ),
            timeout=10,
        )
        key = admin.admin.CreateApiKey(
            admin_service_pb2.CreateApiKeyRequest(account_id="capped", role=common_pb2.ROLE_USER, name="t"), timeout=10
        ).secret
    channel, user = stubs_at(stack.endpoint, key)
    with channel:
        # No agent: every run stays queued.
        first = submit(user, manifest("two", "true", gpus=1, runs=2))
        with pytest.raises(grpc.RpcError) as refused:
            submit(user, manifest("two-more", "true", gpus=1, runs=2))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == (
            "max_queued_runs: account capped may have 3 runs queued; 2 are queued and this experiment would add 2"
        )
        listed = user.experiments.ListExperiments(experiment_service_pb2.ListExperimentsRequest(), timeout=10)
        assert [e.id for e in listed.experiments] == [first.id], "the refused experiment stored nothing"
        # One more still fits; a searched experiment counts the runs it queues at once (max_parallel).
        submit(user, manifest("one", "true", gpus=1, runs=1))
        with pytest.raises(grpc.RpcError):
            submit(
                user,
                manifest("searched", "true", gpus=1, runs=6, extra="").replace(
                    "{method: grid}", "{method: grid, max_parallel: 1}"
                ),
            )
