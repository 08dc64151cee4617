"""The bus dispatches each committed event's effects by its type: wake-ups, cancels to agents, and none for output."""

from __future__ import annotations

import asyncio
import threading

import pytest

from runyard.server.app.aggregates import RUN
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import (
    ApplyAgentReport,
    ApplyAgentReports,
    AssignRun,
    CancelExperiment,
    CancelRun,
    DrainAgent,
    SetQuota,
    SubmitExperiment,
)
from runyard.server.app.effects import effects
from runyard.server.app.unit_of_work import UnitOfWork
from runyard.server.domain import events as ev
from runyard.server.store import EventStore
from runyard.v1 import common_pb2, events_pb2
from tests.unit.server.app.helpers import account, assigned_run, manifest, registration, report, submitted_runs


class Effects:
    """Records what the bus set off."""

    def __init__(self) -> None:
        self.wakeups = 0
        self.stopped: list[str] = []
        self.threads: set[str] = set()

    def wake(self) -> None:
        self.wakeups += 1
        self.threads.add(threading.current_thread().name)

    async def stop(self, run_id: str) -> None:
        self.stopped.append(run_id)

    def reset(self) -> None:
        self.wakeups, self.stopped = 0, []


@pytest.fixture
def recorded(event_store: EventStore) -> tuple[MessageBus, Effects]:
    seen = Effects()
    bus = MessageBus(event_store)
    bus.add_effects(effects(seen.wake, seen.stop))
    return bus, seen


def handle(bus: MessageBus, command: object) -> object:
    return asyncio.run(bus.handle(command))


def test_a_submit_wakes_the_scheduler(recorded: tuple[MessageBus, Effects]) -> None:
    bus, seen = recorded
    handle(bus, SubmitExperiment("acct", manifest(runs=2)))
    assert seen.wakeups > 0 and seen.stopped == []


def test_a_runs_output_and_the_steps_that_keep_its_gpus_wake_nothing(recorded: tuple[MessageBus, Effects]) -> None:
    bus, seen = recorded
    run_id = assigned_run(bus)
    seen.reset()
    line = common_pb2.LogLine(stream=common_pb2.LOG_STREAM_STDOUT, text="epoch 1")
    point = events_pb2.RunMetricsReported(attempt=1)
    quiet = [
        report(run_id, "r1", staging=events_pb2.RunStaging(attempt=1)),
        report(run_id, "r2", started=events_pb2.RunStarted(attempt=1)),
        report(run_id, "r3", logged=events_pb2.RunLogged(attempt=1, lines=[line])),
        report(run_id, "r4", metrics=point),
        report(run_id, "r5", uploading=events_pb2.RunUploading(attempt=1)),
    ]
    for one in quiet[:3]:
        assert handle(bus, ApplyAgentReport(one))
    assert handle(bus, ApplyAgentReports(quiet[3:]))
    assert (seen.wakeups, seen.stopped) == (0, [])

    # The end frees the GPUs: that wakes it.
    handle(bus, ApplyAgentReport(report(run_id, "r6", completed=events_pb2.RunCompleted(attempt=1))))
    assert seen.wakeups == 1


def test_the_schedulers_own_assignment_wakes_nothing(recorded: tuple[MessageBus, Effects]) -> None:
    bus, seen = recorded
    _, (run_id,) = submitted_runs(bus)
    seen.reset()
    handle(bus, AssignRun(run_id, "agent-1", ["GPU-0"]))
    assert seen.wakeups == 0


def test_a_cancel_of_a_held_run_is_sent_to_its_agent_and_a_queued_one_only_wakes(
    recorded: tuple[MessageBus, Effects],
) -> None:
    bus, seen = recorded
    held = assigned_run(bus)
    experiment_id, (queued,) = submitted_runs(bus)
    seen.reset()

    handle(bus, CancelRun(held, "canceled by user"))
    assert seen.stopped == [held] and seen.wakeups == 1

    seen.reset()
    handle(bus, CancelExperiment(experiment_id, "canceled by user"))
    assert seen.stopped == [], "a queued run ends at once: no agent holds it"
    assert seen.wakeups == 2, "the experiment's cancel and the run's end"
    assert bus.load(RUN, queued).state_name == "CANCELED"


def test_registrations_drains_and_plans_wake_the_scheduler(recorded: tuple[MessageBus, Effects]) -> None:
    bus, seen = recorded
    handle(bus, ApplyAgentReport(registration("agent-1")))
    assert seen.wakeups == 1
    handle(bus, DrainAgent("agent-1", reason="maintenance"))
    handle(bus, DrainAgent("agent-1", undrain=True))
    assert seen.wakeups == 3
    account(bus)
    seen.reset()
    handle(bus, SetQuota("acct", 8))
    assert seen.wakeups == 1
    handle(bus, SetQuota("acct", 8))
    assert seen.wakeups == 1, "a plan that did not change records nothing and wakes nothing"


def test_effects_of_a_command_run_in_a_worker_thread_go_to_the_event_loop(event_store: EventStore) -> None:
    seen = Effects()

    async def main() -> None:
        bus = MessageBus(event_store, loop=asyncio.get_running_loop())
        bus.add_effects(effects(seen.wake, seen.stop))
        await asyncio.to_thread(bus.execute, SubmitExperiment("acct", manifest()))
        for _ in range(100):
            if seen.wakeups:
                return
            await asyncio.sleep(0.01)

    name = threading.current_thread().name
    threading.current_thread().name = "the-loop"
    try:
        asyncio.run(main())
    finally:
        threading.current_thread().name = name
    assert seen.wakeups > 0 and seen.threads == {"the-loop"}


class Boom(Exception):
    pass


def test_effects_of_what_was_committed_run_even_when_the_handler_then_fails(event_store: EventStore) -> None:
    seen = Effects()

    def drains_then_fails(command: object, uow: UnitOfWork) -> None:
        uow.append(ev.agent_stream("agent-1"), [events_pb2.AgentDrainRequested(reason="x")])
        raise Boom

    bus = MessageBus(event_store, {DrainAgent: drains_then_fails})
    bus.add_effects(effects(seen.wake, seen.stop))
    with pytest.raises(Boom):
        handle(bus, DrainAgent("agent-1"))
    assert seen.wakeups == 1, "what was stored counts"


def test_a_caller_that_goes_away_does_not_lose_the_effects_of_what_was_committed(event_store: EventStore) -> None:
    seen = Effects()
    started, go_on = threading.Event(), threading.Event()

    def slow_drain(command: object, uow: UnitOfWork) -> None:
        started.set()
        go_on.wait(10)
        uow.append(ev.agent_stream("agent-1"), [events_pb2.AgentDrainRequested(reason="x")])

    async def main() -> None:
        bus = MessageBus(event_store, {DrainAgent: slow_drain})
        bus.add_effects(effects(seen.wake, seen.stop))
        call = asyncio.create_task(bus.handle(DrainAgent("agent-1")))
        await asyncio.to_thread(started.wait, 10)
        call.cancel()  # the RPC's client hung up
        go_on.set()
        for _ in range(500):
            if seen.wakeups:
                return
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert seen.wakeups == 1
