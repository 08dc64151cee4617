"""Billing on the real stack: a server and a GPU agent as processes, PostgreSQL, NATS.

A completed, a failed and a canceled-while-running run each hold one declared
GPU. What UsageService, `runyard usage -o json` and GetRun report must equal
the bill the test computes itself from the event log, to the microsecond.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from runyard.server.store import EventStore
from runyard.v1 import admin_service_pb2, common_pb2, run_service_pb2, usage_service_pb2, usage_service_pb2_grpc
from tests.integration.api.helpers import code_of, create, manifest, wait_state
from tests.integration.billing.ledger import attempts_from_log, bill_by_day, bill_of_run, total
from tests.support.services import NatsServer
from tests.support.stack import Stack, Stubs, cli

pytestmark = pytest.mark.integration

RS = common_pb2.RunState
ONE_GPU = "resources: {gpus: 1}\n"
SLOW = "python -c \"import time; print('started', flush=True); time.sleep(120)\""


@pytest.fixture
def stack(tmp_path: Path, pg_url: str, nats_server: NatsServer) -> Iterator[Stack]:
    s = Stack(root=tmp_path, database_url=pg_url, nats_url=nats_server.url, storage_root=(tmp_path / "o").as_uri())
    try:
        yield s
    finally:
        s.stop()


def wait_billed(usage: usage_service_pb2_grpc.UsageServiceStub, attempts: int, timeout: float = 30) -> None:
    """Until the usage projection has closed `attempts` attempts (it follows the log asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = usage.ListRunUsage(usage_service_pb2.ListRunUsageRequest(page_size=1000), timeout=10).attempts
        if len(listed) == attempts and all(a.HasField("ended_at") for a in listed):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"usage shows {listed}; wanted {attempts} ended attempts")
        time.sleep(0.1)


def test_usage_of_completed_failed_and_canceled_runs_matches_the_event_log(stack: Stack) -> None:
    try:
        _bill_three_runs(stack)
    except BaseException:
        print(stack.logs())
        raise


def _bill_three_runs(stack: Stack) -> None:
    stack.start_server()
    stack.start_agent("gpu-node", 3, "--gpus", "3xH100")
    with stack.channel() as channel:
        stubs = Stubs(channel)
        usage = usage_service_pb2_grpc.UsageServiceStub(channel)
        done = create(stubs, manifest("python -c \"print('ok')\"", "bill-done", ONE_GPU)).experiment.runs[0].id
        failed = create(stubs, manifest('python -c "import sys; sys.exit(3)"', "bill-fail", ONE_GPU)).experiment
        slow = create(stubs, manifest(SLOW, "bill-cancel", ONE_GPU)).experiment.runs[0].id
        wait_state(stubs, slow, {RS.RUN_STATE_RUNNING})
        stubs.runs.CancelRun(run_service_pb2.CancelRunRequest(run_id=slow), timeout=30)
        wait_state(stubs, done, {RS.RUN_STATE_COMPLETED})
        wait_state(stubs, failed.runs[0].id, {RS.RUN_STATE_FAILED})
        wait_state(stubs, slow, {RS.RUN_STATE_CANCELED})
        wait_billed(usage, 3)

        store = EventStore.open(stack.database_url, migrate=False)
        try:
            held = attempts_from_log(store)
        finally:
            store.close()
        assert len(held) == 3 and all(h.end is not None and h.gpus == 1 for h in held.values())
        assert {h.gpu_model for h in held.values()} == {"H100"}
        until = datetime.now(UTC)
        expected = total(held, until)
        assert expected > 0

        reply = usage.GetUsage(usage_service_pb2.GetUsageRequest(), timeout=10)
        assert reply.total_gpu_seconds == expected / 1e6
        by_day = {(r.account_id, r.period, r.gpu_model): r.gpu_seconds for r in reply.rows}
        assert by_day == {k: us / 1e6 for k, us in bill_by_day(held, until).items()}
        for run_id in (done, failed.runs[0].id, slow):
            run = stubs.runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_id), timeout=10).run
            assert run.gpu_seconds == bill_of_run(held, run_id, until) / 1e6, run_id

        # Pages of ListRunUsage cover each attempt once; filtering by experiment keeps its own.
        seen = []
        token = ""
        while True:
            request = usage_service_pb2.ListRunUsageRequest(page_size=2, page_token=token)
            page = usage.ListRunUsage(request, timeout=10)
            seen += [(a.run_id, a.attempt) for a in page.attempts]
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(held)
        only = usage.ListRunUsage(usage_service_pb2.ListRunUsageRequest(experiment_id=failed.id), timeout=10)
        assert [a.run_id for a in only.attempts] == [failed.runs[0].id]

        # Another account's user sees none of it, and may not ask for it.
        stubs.admin.CreateAccount(admin_service_pb2.CreateAccountRequest(account_id="other", gpu_quota=1), timeout=10)
        made = stubs.admin.CreateApiKey(
            admin_service_pb2.CreateApiKeyRequest(account_id="other", role=common_pb2.ROLE_USER), timeout=10
        )
    with stack.channel(made.secret) as channel:
        theirs = usage_service_pb2_grpc.UsageServiceStub(channel)
        empty = theirs.GetUsage(usage_service_pb2.GetUsageRequest(), timeout=10)
        assert (list(empty.rows), empty.total_gpu_seconds) == ([], 0.0)
        assert not theirs.ListRunUsage(usage_service_pb2.ListRunUsageRequest(), timeout=10).attempts
        account = next(iter(held.values())).account_id
        with pytest.raises(grpc.RpcError) as refused:
            theirs.GetUsage(usage_service_pb2.GetUsageRequest(account_id=account), timeout=10)
        assert code_of(refused.value) == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as refused:
            theirs.ListRunUsage(usage_service_pb2.ListRunUsageRequest(account_id=account), timeout=10)
        assert code_of(refused.value) == grpc.StatusCode.PERMISSION_DENIED

    out = subprocess.run(
        cli("usage", "-o", "json", "--period", "month"),
        env={**stack.env(), "RUNYARD_ENDPOINT": stack.endpoint, "RUNYARD_API_KEY": stack.admin_key},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["total_gpu_seconds"] == expected / 1e6
