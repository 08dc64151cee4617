"""A run's consecutive reports stored in one transaction: the same log as one by one, or nothing at all."""

from __future__ import annotations

import pytest

from runyard.server.app.aggregates import EXPERIMENT, RUN
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import ApplyAgentReport, ApplyAgentReports, AssignRun, SubmitExperiment
from runyard.server.domain import events as ev
from runyard.server.domain.errors import DomainError, IllegalTransition, StaleAttempt
from runyard.server.store import EventStore
from runyard.v1 import agent_pb2, common_pb2, events_pb2
from tests.integration.scheduling.helpers import manifest

pytestmark = pytest.mark.integration


def assigned_run(bus: MessageBus) -> str:
    experiment_id = bus.execute(SubmitExperiment("acct", manifest("one", "true", gpus=0, runs=1))).experiment_id
    (run_id,) = bus.load(EXPERIMENT, experiment_id).run_ids
    bus.execute(AssignRun(run_id, "agent-1", []))
    return run_id


def report(run_id: str, event_id: str, agent_id: str = "agent-1", **body: object) -> agent_pb2.AgentReport:
    return agent_pb2.AgentReport(event_id=f"{run_id}:{event_id}", agent_id=agent_id, run_id=run_id, **body)  # type: ignore[arg-type]


def the_end(run_id: str) -> list[agent_pb2.AgentReport]:
    line = common_pb2.LogLine(stream=common_pb2.LOG_STREAM_STDOUT, text="done")
    return [
        report(run_id, "r1", staging=events_pb2.RunStaging(attempt=1)),
        report(run_id, "r2", started=events_pb2.RunStarted(attempt=1)),
        report(run_id, "r3", logged=events_pb2.RunLogged(run_id=run_id, attempt=1, lines=[line])),
        report(run_id, "r4", uploading=events_pb2.RunUploading(attempt=1)),
        report(run_id, "r5", completed=events_pb2.RunCompleted(attempt=1)),
    ]


def types_after(store: EventStore, position: int) -> list[tuple[str, str]]:
    return [(e.stream_id.split(":")[0], e.type.removeprefix("runyard.v1.")) for e in store.read_all(position, 100)]


def test_a_batch_stores_what_one_by_one_would_in_order_and_once(store: EventStore) -> None:
    bus = MessageBus(store)
    one, many = assigned_run(bus), assigned_run(bus)
    head = store.head_position()
    for r in the_end(one):
        bus.execute(ApplyAgentReport(r))
    singly = types_after(store, head)
    head = store.head_position()
    bus.execute(ApplyAgentReports(the_end(many)))
    assert types_after(store, head) == singly
    assert bus.load(RUN, many).state_name == "COMPLETED"
    # Redelivered reports store nothing more: the same output by its ids, the same end by the run's state;
    # an earlier step the run has left behind refuses the whole batch (the ingest then takes them one by one).
    head = store.head_position()
    bus.execute(ApplyAgentReports(the_end(many)[2::2]))
    assert store.head_position() == head
    with pytest.raises(IllegalTransition):
        bus.execute(ApplyAgentReports(the_end(many)))
    assert store.head_position() == head


def test_a_refused_report_stores_nothing_of_the_batch(store: EventStore) -> None:
    bus = MessageBus(store)
    run_id = assigned_run(bus)
    head = store.head_position()
    reports = the_end(run_id)
    skipping = [reports[0], reports[4]]  # completed before uploading
    with pytest.raises(IllegalTransition):
        bus.execute(ApplyAgentReports(skipping))
    stale = [reports[0], report(run_id, "x", started=events_pb2.RunStarted(attempt=2))]
    with pytest.raises(StaleAttempt):
        bus.execute(ApplyAgentReports(stale))
    other_agent = [reports[0], report(run_id, "y", agent_id="agent-2", started=events_pb2.RunStarted(attempt=1))]
    with pytest.raises(DomainError, match="held by agent agent-1, not by agent agent-2"):
        bus.execute(ApplyAgentReports(other_agent))
    assert store.head_position() == head
    with pytest.raises(ValueError):
        bus.execute(ApplyAgentReports([reports[0], report("run-other", "z", staging=events_pb2.RunStaging(attempt=1))]))
    assert ev.run_stream(run_id) and store.head_position() == head
