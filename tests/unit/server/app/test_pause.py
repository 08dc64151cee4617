"""Pausing and resuming an experiment: its runs wait PAUSED (from the queue at once, from an agent after a
graceful stop) and go back to the queue on resume; an ended experiment refuses both."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from runyard.server.app.aggregates import EXPERIMENT, RUN, change
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import (
    AddTrial,
    ApplyAgentReport,
    AssignRun,
    CancelExperiment,
    PauseExperiment,
    ResumeExperiment,
    SettlePausedRun,
    SubmitExperiment,
)
from runyard.server.app.effects import effects
from runyard.server.app.unit_of_work import UnitOfWork
from runyard.server.domain.errors import IllegalTransition
from runyard.server.domain.experiment import EXPERIMENT_PAUSE
from runyard.server.store import EventStore
from runyard.v1 import events_pb2
from tests.unit.server.app.helpers import manifest, report, submitted_runs


class Seen:
    def __init__(self) -> None:
        self.stopped: list[tuple[str, dict[str, Any]]] = []

    def wake(self) -> None:
        pass

    async def stop(self, run_id: str, **how: Any) -> None:
        self.stopped.append((run_id, how))


def bus_with_effects(store: EventStore) -> tuple[MessageBus, Seen]:
    seen = Seen()
    bus = MessageBus(store)
    bus.add_effects(effects(seen.wake, seen.stop, settle_paused=lambda run_id: bus.handle(SettlePausedRun(run_id))))
    return bus, seen


def handle(bus: MessageBus, command: object) -> Any:
    return asyncio.run(bus.handle(command))


def states(bus: MessageBus, run_ids: list[str]) -> list[str]:
    return [bus.load(RUN, r).state_name for r in run_ids]


def stopped_by_agent(bus: MessageBus, run_id: str, n: int) -> None:
    """The agent stops the attempt on request and reports it canceled (as it always does)."""
    handle(bus, ApplyAgentReport(report(run_id, f"c-{run_id}-{n}", canceled=events_pb2.RunCanceled(attempt=n))))


def test_pause_holds_queued_runs_at_once_and_stops_held_ones_gracefully(event_store: EventStore) -> None:
    bus, seen = bus_with_effects(event_store)
    experiment_id, (held, queued) = submitted_runs(bus, runs=2)
    handle(bus, AssignRun(held, "agent-1", ["GPU-0"]))

    assert handle(bus, PauseExperiment(experiment_id, "maintenance")) > 0
    assert bus.load(EXPERIMENT, experiment_id).paused
    assert states(bus, [held, queued]) == ["ASSIGNED", "PAUSED"]
    assert bus.load(RUN, held).pause_requested
    assert seen.stopped == [(held, {"reason": EXPERIMENT_PAUSE, "graceful": True})]

    # Again: idempotent, nothing more stored or sent.
    head = event_store.head_position()
    assert handle(bus, PauseExperiment(experiment_id)) == 0
    assert event_store.head_position() == head and len(seen.stopped) == 1

    stopped_by_agent(bus, held, 1)
    assert states(bus, [held, queued]) == ["PAUSED", "PAUSED"]

    assert handle(bus, ResumeExperiment(experiment_id)) > 0
    assert not bus.load(EXPERIMENT, experiment_id).paused
    assert states(bus, [held, queued]) == ["QUEUED", "QUEUED"]
    assert handle(bus, ResumeExperiment(experiment_id)) == 0, "resumed again: nothing to do"
    # The next attempt of the paused run is a fresh one.
    handle(bus, AssignRun(held, "agent-1", ["GPU-0"]))
    assert bus.load(RUN, held).attempt == 2


def test_a_resume_before_the_agent_stopped_the_run_queues_it_when_it_pauses(event_store: EventStore) -> None:
    bus, _ = bus_with_effects(event_store)
    experiment_id, (run_id,) = submitted_runs(bus)
    handle(bus, AssignRun(run_id, "agent-1", ["GPU-0"]))
    handle(bus, PauseExperiment(experiment_id))
    handle(bus, ResumeExperiment(experiment_id))
    assert states(bus, [run_id]) == ["ASSIGNED"]
    stopped_by_agent(bus, run_id, 1)
    assert states(bus, [run_id]) == ["QUEUED"], "the experiment was resumed meanwhile: the run queues again"


def test_resume_leaves_runs_paused_for_another_reason(event_store: EventStore) -> None:
    bus, _ = bus_with_effects(event_store)
    experiment_id, (asha, other) = submitted_runs(bus, runs=2)
    change(UnitOfWork(event_store), RUN, asha, lambda r: r.request_pause("asha", rung=1))
    handle(bus, PauseExperiment(experiment_id))
    handle(bus, ResumeExperiment(experiment_id))
    assert states(bus, [asha, other]) == ["PAUSED", "QUEUED"]


def test_an_ended_experiment_refuses_pause_and_resume_naming_its_state(event_store: EventStore) -> None:
    bus, _ = bus_with_effects(event_store)
    experiment_id, _ = submitted_runs(bus, runs=2)
    handle(bus, CancelExperiment(experiment_id, "canceled by user"))
    with pytest.raises(IllegalTransition, match="CANCEL_REQUESTED; cannot pause"):
        handle(bus, PauseExperiment(experiment_id))

    done_id, (run_id,) = submitted_runs(bus)
    change(UnitOfWork(event_store), RUN, run_id, lambda r: r.request_cancel("gone"))
    with pytest.raises(IllegalTransition, match=f"experiment {done_id} is ENDED; cannot resume"):
        handle(bus, ResumeExperiment(done_id))


def test_a_paused_experiment_can_be_canceled(event_store: EventStore) -> None:
    bus, _ = bus_with_effects(event_store)
    experiment_id, run_ids = submitted_runs(bus, runs=2)
    handle(bus, PauseExperiment(experiment_id))
    handle(bus, CancelExperiment(experiment_id, "canceled by user"))
    assert states(bus, run_ids) == ["CANCELED", "CANCELED"]


def test_a_trial_added_while_paused_starts_paused_and_resumes_with_the_rest(event_store: EventStore) -> None:
    bus, _ = bus_with_effects(event_store)
    searched = manifest(runs=3).replace("search: {method: grid}", "search: {method: grid, max_parallel: 1}")
    experiment_id = handle(bus, SubmitExperiment("acct", searched)).experiment_id
    assert bus.load(EXPERIMENT, experiment_id).run_ids == ()
    handle(bus, PauseExperiment(experiment_id))
    decision = uuid.uuid4()
    handle(bus, AddTrial(experiment_id, 0, {"i": 1}, decision))
    (run_id,) = bus.load(EXPERIMENT, experiment_id).run_ids
    assert states(bus, [run_id]) == ["PAUSED"]
    head = event_store.head_position()
    handle(bus, AddTrial(experiment_id, 0, {"i": 1}, decision))
    assert event_store.head_position() == head, "a re-derived decision adds nothing"
    handle(bus, ResumeExperiment(experiment_id))
    assert states(bus, [run_id]) == ["QUEUED"]


def test_the_experiment_aggregate_records_pause_and_resume() -> None:
    from runyard.server.domain.experiment import Experiment
    from runyard.server.domain.manifest import parse_manifest

    text = manifest()
    opened, _ = Experiment.create("exp-1", "acct", parse_manifest(text), text, "", "")
    experiment = Experiment.replay([opened])
    (paused,) = experiment.pause("why")
    experiment.apply(paused)
    assert experiment.paused and experiment.pause_reason == "why"
    assert experiment.pause() == []
    (resumed,) = experiment.resume()
    assert isinstance(resumed, events_pb2.ExperimentResumed)
    experiment.apply(resumed)
    assert not experiment.paused and experiment.resume() == []
    with pytest.raises(IllegalTransition, match="ENDED"):
        experiment.pause(runs_ended=True)


def test_a_searchers_resume_while_the_experiment_is_paused_waits_for_the_experiments_resume(
    event_store: EventStore,
) -> None:
    from runyard.server.app.experiments import resume_within

    bus, _ = bus_with_effects(event_store)
    experiment_id, (run_id,) = submitted_runs(bus)
    uow = UnitOfWork(event_store)
    change(uow, RUN, run_id, lambda r: r.request_pause("asha", rung=1))
    handle(bus, PauseExperiment(experiment_id))
    experiment = bus.load(EXPERIMENT, experiment_id)
    change(uow, RUN, run_id, lambda r: resume_within(experiment, r, "promoted", rung=1))
    assert states(bus, [run_id]) == ["PAUSED"] and bus.load(RUN, run_id).pause_reason == EXPERIMENT_PAUSE
    handle(bus, ResumeExperiment(experiment_id))
    assert states(bus, [run_id]) == ["QUEUED"]
