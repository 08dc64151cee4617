"""PauseRun and ResumeRun, the commands ASHA's pause variant executes: the searcher's event ids, once each."""

from __future__ import annotations

import uuid

from runyard.server.app.aggregates import RUN, change
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import PauseRun, ResumeRun
from runyard.server.app.unit_of_work import UnitOfWork
from runyard.server.domain import events as ev
from runyard.server.domain.run_states import PAUSED, QUEUED
from runyard.server.store import EventLog
from runyard.v1 import events_pb2
from tests.unit.server.app.helpers import account, assigned_run, submitted_runs


def test_a_searcher_pause_then_promotion_records_its_events_under_the_decisions_ids(event_store: EventLog) -> None:
    bus = MessageBus(event_store)
    account(bus)
    run_id = assigned_run(bus)
    pause_id, resume_id = uuid.uuid4(), uuid.uuid4()

    bus.execute(PauseRun(run_id, "asha", 1, pause_id))
    bus.execute(PauseRun(run_id, "asha", 1, pause_id))  # a re-derived decision: nothing twice
    run = bus.load(RUN, run_id)
    assert (run.pause_requested, run.paused_rung, run.pause_reason) == (True, 1, "asha")
    # The agent stops the attempt (with a last checkpoint) and reports it canceled: the run is PAUSED.
    change(UnitOfWork(event_store), RUN, run_id, lambda r: r.report_canceled(r.attempt))
    assert bus.load(RUN, run_id).state == PAUSED

    bus.execute(ResumeRun(run_id, "asha", 1, resume_id))
    bus.execute(ResumeRun(run_id, "asha", 1, resume_id))
    assert bus.load(RUN, run_id).state == QUEUED

    stream = event_store.read_stream(ev.run_stream(run_id))
    by_id = {e.event_id: ev.decode(e.type, e.data) for e in stream}
    assert by_id[pause_id] == events_pb2.RunPauseRequested(reason="asha", rung=1)
    assert by_id[resume_id] == events_pb2.RunResumed(reason="asha", rung=1)
    assert [e.type for e in stream].count(events_pb2.RunPauseRequested.DESCRIPTOR.full_name) == 1
    assert [e.type for e in stream].count(events_pb2.RunResumed.DESCRIPTOR.full_name) == 1


def test_a_queued_run_pauses_at_once_and_a_run_not_paused_is_not_resumed(event_store: EventLog) -> None:
    bus = MessageBus(event_store)
    account(bus)
    _, (run_id,) = submitted_runs(bus)
    assert bus.execute(ResumeRun(run_id, "asha", 1)).events == []
    bus.execute(PauseRun(run_id, "owner"))
    assert bus.load(RUN, run_id).state == PAUSED
    assert bus.execute(PauseRun(run_id, "owner")).events == []
    bus.execute(ResumeRun(run_id, "owner"))
    assert bus.load(RUN, run_id).state == QUEUED


def test_a_promotion_while_the_experiment_is_paused_is_recorded_and_waits_for_the_experiments_resume(
    event_store: EventLog,
) -> None:
    from runyard.server.app.commands import PauseExperiment, ResumeExperiment
    from runyard.server.domain.experiment import EXPERIMENT_PAUSE

    bus = MessageBus(event_store)
    account(bus)
    experiment_id, (run_id,) = submitted_runs(bus)
    bus.execute(PauseRun(run_id, "asha", 1))  # from the queue: PAUSED at once
    bus.execute(PauseExperiment(experiment_id))
    promotion = uuid.uuid4()
    bus.execute(ResumeRun(run_id, "asha", 1, promotion))
    bus.execute(ResumeRun(run_id, "asha", 1, promotion))
    run = bus.load(RUN, run_id)
    assert (run.state, run.pause_reason) == (PAUSED, EXPERIMENT_PAUSE)
    resumed = [e for e in event_store.read_stream(ev.run_stream(run_id)) if e.event_id == promotion]
    assert [ev.decode(e.type, e.data) for e in resumed] == [events_pb2.RunResumed(reason="asha", rung=1)]
    bus.execute(ResumeExperiment(experiment_id))
    assert bus.load(RUN, run_id).state == QUEUED
