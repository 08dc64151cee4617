"""Preemption on the real stack: a server, two agents with declared GPUs, PostgreSQL, NATS.

Account a fills the four GPUs with long runs; account b, below its fair share,
submits a two-GPU run. Two of a's runs on one agent are preempted (the
youngest), stop within their grace, go back to the queue uncharged; b's run
starts on the GPUs they freed, and a's runs start again and finish. `show`
says who took the GPUs and why, and the bill of every attempt equals an
independent sum over the raw events. A run marked `preemptible: false`, or a
run of an account whose policy forbids it, is never preempted.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from datetime import UTC, datetime

import pytest

from runyard.server.domain.events import decode
from runyard.server.store import EventStore
from runyard.v1 import (
    admin_service_pb2,
    common_pb2,
    events_pb2,
    resources_pb2,
    run_service_pb2,
    usage_service_pb2,
    usage_service_pb2_grpc,
)
from tests.integration.billing.ledger import attempts_from_log, bill_of_run
from tests.integration.scheduling.helpers import (
    all_ended,
    create_account,
    experiment,
    manifest,
    start_gpu_agents,
    stubs_at,
    submit,
    wait_until,
)
from tests.support.stack import Stack, Stubs, cli

pytestmark = pytest.mark.integration

RS = common_pb2.RunState
#: The agent stages the latest checkpoint into a preempted run's next attempt: it resumes, never from step 0.
AGENT_CHECKPOINTS = True
GRACE_S = 5
#: Seconds a blocked run waits before it may preempt (the server's default is 30).
PREEMPTION_WAIT = "1"


def steps(count: int) -> str:
    """A run of `count` half-second steps that checkpoints each step and resumes from its checkpoint."""
    body = (
        "import os, time, pathlib; "
        'd = os.environ.get("CHECKPOINT_DIR") or os.environ["RESULT_DIR"]; '
        'p = pathlib.Path(d, "step"); '
        'tmp = pathlib.Path(d, ".step"); '
        's = int(p.read_text()) if os.environ.get("RUNYARD_RESUMED") == "1" and p.exists() else 0; '
        'print("start at step", s, flush=True); '
        'w = lambda i: (tmp.write_text(str(i)), os.replace(tmp, p), print("step", i, flush=True), time.sleep(0.5)); '
        f"[w(i) for i in range(s + 1, {count} + 1)]"
    )
    return f"python -c '{body}'"


def run_events(database_url: str) -> dict[str, list[tuple[int, datetime, object]]]:
    """Every run's events and log lines, decoded, as (position, recorded_at, message), straight from the log."""
    store = EventStore.open(database_url, migrate=False)
    try:
        out: dict[str, list[tuple[int, datetime, object]]] = defaultdict(list)
        after = 0
        while batch := store.read_all(after, 1000):
            for e in batch:
                after = e.position
                kind, _, run_id = e.stream_id.partition(":")
                if kind in ("run", "run-logs"):  # a run's transitions, and its output (RunLogged)
                    out[run_id].append((e.position, e.recorded_at, decode(e.type, e.data)))
        return out
    finally:
        store.close()


def of_type(events: list[tuple[int, datetime, object]], kind: type) -> list[tuple[int, datetime, object]]:
    return [e for e in events if isinstance(e[2], kind)]


def test_a_run_below_its_fair_share_preempts_the_youngest_runs_on_one_agent(stack: Stack) -> None:
    stack.start_server(preemption_wait=PREEMPTION_WAIT)
    with stack.channel() as admin_channel:
        admin = Stubs(admin_channel)
        key_a, key_b = create_account(admin, "a", gpu_quota=4), create_account(admin, "b", gpu_quota=4)
        start_gpu_agents(stack, admin, {"gpu-x": "2xH100", "gpu-y": "2xH100"})
        channel_a, user_a = stubs_at(stack.endpoint, key_a)
        channel_b, user_b = stubs_at(stack.endpoint, key_b)
        with channel_a, channel_b:
            fill = manifest("fill", steps(24), gpus=1, runs=4, extra=f"preemption: {{grace: {GRACE_S}s}}\n")
            filled = submit(user_a, fill)

            def all_running() -> bool:
                runs = experiment(user_a, filled.id).runs
                return len(runs) == 4 and all(r.state == RS.RUN_STATE_RUNNING for r in runs)

            wait_until("a's four runs to run", all_running, stack=stack)
            taker = submit(user_b, manifest("taker", "python -c 'print(1)'", gpus=2))
            taker_run = taker.runs[0].id
            done = [filled.id, taker.id]
            wait_until("every run to finish", lambda: all_ended(admin, done), timeout=180, stack=stack)
            assert experiment(user_a, filled.id).state == resources_pb2.EXPERIMENT_STATE_COMPLETED
            assert experiment(user_b, taker.id).state == resources_pb2.EXPERIMENT_STATE_COMPLETED

            log = run_events(stack.database_url)
            asked = {r: of_type(ev, events_pb2.RunPreemptRequested) for r, ev in log.items()}
            victims = sorted(r for r, found in asked.items() if found)
            assert len(victims) == 2, {r: [e[2] for e in found] for r, found in asked.items() if found}
            first_assigned = {r: of_type(log[r], events_pb2.RunAssigned)[0] for r in victims}
            agents = {first_assigned[r][2].agent_id for r in victims}  # type: ignore[attr-defined]
            assert len(agents) == 1, "the victims free GPUs on one agent"
            (agent,) = agents
            # The youngest runs of that agent: the other runs there (none) or on it started earlier.
            others = [
                of_type(log[r], events_pb2.RunAssigned)[0]
                for r in log
                if r not in victims and r != taker_run and of_type(log[r], events_pb2.RunAssigned)
            ]
            assert all(o[2].agent_id != agent for o in others), "no run of a is left on the victims' agent"  # type: ignore[attr-defined]
            for r in victims:
                (_, requested_at, msg) = asked[r][0]
                assert isinstance(msg, events_pb2.RunPreemptRequested)
                assert msg.by_run_id == taker_run and msg.rule == "fair-share" and msg.grace_seconds == GRACE_S
                assert msg.reason.startswith("account b is below its fair share (0 of 2 GPUs); account a holds"), msg
                requeued = of_type(log[r], events_pb2.RunRequeued)
                assert len(requeued) == 1
                (_, requeued_at, back) = requeued[0]
                assert isinstance(back, events_pb2.RunRequeued)
                assert back.attempt == 1 and back.reason == common_pb2.FAILURE_REASON_PREEMPTED
                assert (requeued_at - requested_at).total_seconds() <= GRACE_S + 3, "stopped within its grace"
                ends = of_type(log[r], events_pb2.RunCompleted)
                assert len(ends) == 1 and ends[0][2].attempt == 2  # type: ignore[attr-defined]
            # b's run got the freed GPUs: on the victims' agent, before either victim started again.
            (taker_assigned,) = of_type(log[taker_run], events_pb2.RunAssigned)
            assert taker_assigned[2].agent_id == agent  # type: ignore[attr-defined]
            restarts = [of_type(log[r], events_pb2.RunAssigned)[1][0] for r in victims]
            assert taker_assigned[0] < min(restarts)
            # Nobody preempted b's run back (no thrash), and only a's runs were ever preempted.
            assert not asked[taker_run]
            if AGENT_CHECKPOINTS:
                for r in victims:
                    lines = "".join(
                        line.text
                        for _, _, m in of_type(log[r], events_pb2.RunLogged)
                        if m.attempt == 2  # type: ignore[attr-defined]
                        for line in m.lines  # type: ignore[attr-defined]
                    )
                    assert "start at step 0" not in lines and "start at step" in lines, lines

            # `show` (GetRun and the CLI) says who took the GPUs, for which rule and why.
            shown = user_a.runs.GetRun(run_service_pb2.GetRunRequest(run_id=victims[0]), timeout=10).run
            assert shown.preempted_by == taker_run and shown.preempt_rule == "fair-share"
            out = subprocess.run(
                cli("show", victims[0]),
                env={**stack.env(), "RUNYARD_ENDPOINT": stack.endpoint, "RUNYARD_API_KEY": key_a},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            assert f"by run {taker_run} (fair-share)" in out.stdout, out.stdout

            # The bill: every attempt from its RunAssigned to its end, preempted ones included, never queue time.
            usage = usage_service_pb2_grpc.UsageServiceStub(admin_channel)

            def billed() -> list[usage_service_pb2.AttemptUsage] | None:
                listed = []
                for account in ("a", "b"):
                    request = usage_service_pb2.ListRunUsageRequest(account_id=account, page_size=1000)
                    listed += list(usage.ListRunUsage(request, timeout=10).attempts)
                return listed if len(listed) == 7 and all(x.HasField("ended_at") for x in listed) else None

            listed = wait_until("the usage projection to close all 7 attempts", billed, stack=stack)
            store = EventStore.open(stack.database_url, migrate=False)
            try:
                held = attempts_from_log(store)
            finally:
                store.close()
            until = datetime.now(UTC)
            assert sorted(held) == sorted((x.run_id, x.attempt) for x in listed)
            for x in listed:
                one = {(x.run_id, x.attempt): held[(x.run_id, x.attempt)]}
                assert round(x.gpu_seconds * 1e6) == bill_of_run(one, x.run_id, until), (x.run_id, x.attempt)
            for r in victims:
                preempted = held[(r, 1)]
                assert preempted.end == of_type(log[r], events_pb2.RunRequeued)[0][1], "billed up to the requeue"
                run = user_a.runs.GetRun(run_service_pb2.GetRunRequest(run_id=r), timeout=10).run
                assert run.gpu_seconds == bill_of_run(held, r, until) / 1e6
                # The queue time between the attempts is never billed.
                assert preempted.end is not None
                gap = (held[(r, 2)].start - preempted.end).total_seconds()
                summed = 0.0
                for k, h in held.items():
                    if k[0] == r and h.end is not None:
                        summed += (h.end - h.start).total_seconds() * h.gpus
                assert gap > 0 and abs(run.gpu_seconds - summed) < 1e-3


@pytest.mark.parametrize("protected_by", ["manifest", "account"])
def test_runs_that_may_not_be_preempted_never_are(stack: Stack, protected_by: str) -> None:
    stack.start_server(preemption_wait=PREEMPTION_WAIT)
    with stack.channel() as admin_channel:
        admin = Stubs(admin_channel)
        key_a, key_b = create_account(admin, "a", gpu_quota=4), create_account(admin, "b", gpu_quota=4)
        if protected_by == "account":
            out = subprocess.run(
                cli("admin", "accounts", "set", "a", "--preemptible", "false"),
                env={**stack.env(), "RUNYARD_ENDPOINT": stack.endpoint, "RUNYARD_API_KEY": stack.admin_key},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            assert "account a: the scheduler may not preempt its runs" in out.stdout, out.stdout
            listed = admin.admin.ListAccounts(admin_service_pb2.ListAccountsRequest(), timeout=10).accounts
            assert {x.id: x.not_preemptible for x in listed}["a"]
        start_gpu_agents(stack, admin, {"gpu-x": "2xH100", "gpu-y": "2xH100"})
        channel_a, user_a = stubs_at(stack.endpoint, key_a)
        channel_b, user_b = stubs_at(stack.endpoint, key_b)
        with channel_a, channel_b:
            extra = "preemptible: false\n" if protected_by == "manifest" else ""
            filled = submit(user_a, manifest("fill", steps(12), gpus=1, runs=4, extra=extra))

            def all_running() -> bool:
                runs = experiment(user_a, filled.id).runs
                return len(runs) == 4 and all(r.state == RS.RUN_STATE_RUNNING for r in runs)

            wait_until("a's four runs to run", all_running, stack=stack)
            taker = submit(user_b, manifest("taker", "python -c 'print(1)'", gpus=2))
            wait_until("every run to finish", lambda: all_ended(admin, [filled.id, taker.id]), timeout=180, stack=stack)
            # b waited for a's runs to end (seconds, much more than the preemption wait): nothing was preempted.
            log = run_events(stack.database_url)
            assert not any(of_type(ev, events_pb2.RunPreemptRequested) for ev in log.values())
            assert all(len(of_type(ev, events_pb2.RunAssigned)) == 1 for ev in log.values())
            if protected_by == "manifest":
                shown = user_a.runs.GetRun(run_service_pb2.GetRunRequest(run_id=filled.runs[0].id), timeout=10).run
                assert shown.not_preemptible and not shown.preempted_by


def test_a_higher_priority_run_of_the_same_account_preempts_its_lower_priority_runs(stack: Stack) -> None:
    stack.start_server(preemption_wait=PREEMPTION_WAIT)
    with stack.channel() as admin_channel:
        admin = Stubs(admin_channel)
        key = create_account(admin, "a", gpu_quota=8)  # quota to spare: the urgent run waits for GPUs, not quota
        start_gpu_agents(stack, admin, {"gpu-x": "2xH100", "gpu-y": "2xH100"})
        channel, user = stubs_at(stack.endpoint, key)
        with channel:
            filled = submit(user, manifest("fill", steps(16), gpus=1, runs=4, extra="preemption: {grace: 3s}\n"))

            def all_running() -> bool:
                runs = experiment(user, filled.id).runs
                return len(runs) == 4 and all(r.state == RS.RUN_STATE_RUNNING for r in runs)

            wait_until("the four low-priority runs to run", all_running, stack=stack)
            urgent = submit(user, manifest("urgent", "python -c 'print(1)'", gpus=2, extra="priority: 10\n"))
            urgent_run = urgent.runs[0].id
            wait_until("every run to finish", lambda: all_ended(admin, [filled.id, urgent.id]), timeout=180)
            log = run_events(stack.database_url)
            asked = [e[2] for ev in log.values() for e in of_type(ev, events_pb2.RunPreemptRequested)]
            assert len(asked) == 2, asked
            for msg in asked:
                assert isinstance(msg, events_pb2.RunPreemptRequested)
                assert msg.by_run_id == urgent_run and msg.rule == "priority" and msg.grace_seconds == 3
                assert msg.reason == f"run {urgent_run} of account a has priority 10, higher than this run's 0"
            assert experiment(user, filled.id).state == resources_pb2.EXPERIMENT_STATE_COMPLETED
