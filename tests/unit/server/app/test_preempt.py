"""PreemptRun and SetAccountPreemption: what they record, and the cancel a preemption sends to the agent."""

from __future__ import annotations

import asyncio

from runyard.server.app.aggregates import ACCOUNT, RUN
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import ApplyAgentReport, PreemptRun, SetAccountPreemption
from runyard.server.app.effects import DEFAULT_PREEMPTION_GRACE_S, effects
from runyard.server.store import EventStore
from runyard.v1 import common_pb2, events_pb2
from tests.unit.server.app.helpers import account, assigned_run, report


class Seen:
    def __init__(self) -> None:
        self.wakeups = 0
        self.stopped: list[str] = []
        self.preempted: list[tuple[str, int, str]] = []

    def wake(self) -> None:
        self.wakeups += 1

    async def stop(self, run_id: str) -> None:
        self.stopped.append(run_id)

    async def preempt(self, run_id: str, grace_seconds: int, reason: str) -> None:
        self.preempted.append((run_id, grace_seconds, reason))


def _bus(event_store: EventStore) -> tuple[MessageBus, Seen]:
    seen = Seen()
    bus = MessageBus(event_store)
    bus.add_effects(effects(seen.wake, seen.stop, preempt_on_agent=seen.preempt))
    return bus, seen


def test_a_preempted_run_gets_a_cancel_with_its_grace_and_the_reason_and_is_requeued_uncharged(
    event_store: EventStore,
) -> None:
    bus, seen = _bus(event_store)
    run_id = assigned_run(bus)
    why = "account b is below its fair share (0 of 2 GPUs); account a holds 4 of its fair 2"
    asyncio.run(bus.handle(PreemptRun(run_id, why, "r-taker", "fair-share", 0)))
    assert seen.preempted == [(run_id, DEFAULT_PREEMPTION_GRACE_S, "preempted by run r-taker (fair-share)")]
    assert seen.stopped == []
    run = bus.load(RUN, run_id)
    assert run.preempt is not None and run.preempt.reason == why and run.preempt.by_run_id == "r-taker"

    # Asked again while it stops: nothing more is recorded or sent.
    asyncio.run(bus.handle(PreemptRun(run_id, why, "r-other", "priority", 30)))
    assert len(seen.preempted) == 1

    # The agent reports the stop as canceled: the run is back in the queue, PREEMPTED, no restart charged.
    bus.execute(ApplyAgentReport(report(run_id, "e-1", canceled=events_pb2.RunCanceled(attempt=1))))
    run = bus.load(RUN, run_id)
    assert run.state_name == "QUEUED" and run.restarts == 0
    assert run.failure_reason == common_pb2.FAILURE_REASON_PREEMPTED and run.message == why


def test_a_grace_given_by_the_manifest_is_sent(event_store: EventStore) -> None:
    bus, seen = _bus(event_store)
    run_id = assigned_run(bus)
    asyncio.run(bus.handle(PreemptRun(run_id, "why", "r-2", "priority", 7)))
    assert seen.preempted == [(run_id, 7, "preempted by run r-2 (priority)")]


def test_the_account_policy_records_only_changes(event_store: EventStore) -> None:
    bus, _ = _bus(event_store)
    account(bus)
    assert bus.load(ACCOUNT, "acct").preemptible
    assert bus.execute(SetAccountPreemption("acct", True)) == 0, "already preemptible: nothing recorded"
    assert bus.execute(SetAccountPreemption("acct", False)) > 0
    assert not bus.load(ACCOUNT, "acct").preemptible
    assert bus.execute(SetAccountPreemption("acct", False)) == 0
    assert bus.execute(SetAccountPreemption("acct", True)) > 0 and bus.load(ACCOUNT, "acct").preemptible
    assert events_pb2.AccountPreemptionSet(preemptible=True).preemptible
