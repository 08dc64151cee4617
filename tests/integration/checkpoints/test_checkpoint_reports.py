"""An agent's `checkpointed` report becomes the run's RunCheckpointed, fenced like every report."""

from __future__ import annotations

import pytest

from runyard.server.app.aggregates import EXPERIMENT, RUN
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import ApplyAgentReport, ApplyAgentReports, AssignRun, ExpireAttempt, SubmitExperiment
from runyard.server.domain.checkpoint_layout import manifest_uri
from runyard.server.domain.errors import DomainError, StaleAttempt
from runyard.server.store import EventStore
from runyard.v1 import common_pb2, events_pb2
from tests.integration.commands.test_apply_reports import report
from tests.integration.scheduling.helpers import manifest

pytestmark = pytest.mark.integration


def assigned_run(bus: MessageBus) -> str:
    text = manifest("ck", "true", gpus=0, extra="max_restarts: 2\n")
    (run_id,) = bus.load(EXPERIMENT, bus.execute(SubmitExperiment("acct", text)).experiment_id).run_ids
    bus.execute(AssignRun(run_id, "agent-1", []))
    return run_id


def checkpointed(run_id: str, attempt: int, seq: int, step: int) -> events_pb2.RunCheckpointed:
    cid = f"{attempt}-{seq}"
    ck = common_pb2.Checkpoint(
        checkpoint_id=cid,
        run_id=run_id,
        attempt=attempt,
        step=step,
        size_bytes=10,
        files=1,
        manifest_uri=manifest_uri(f"s3://results/ck/{run_id}", cid),  # the run's results: manifest("ck") + run id
    )
    return events_pb2.RunCheckpointed(attempt=attempt, checkpoint=ck)


def test_the_holder_records_checkpoints_once_and_the_next_attempt_resumes_from_the_latest(store: EventStore) -> None:
    bus = MessageBus(store)
    run_id = assigned_run(bus)
    bus.execute(
        ApplyAgentReports(
            [
                report(run_id, "s", staging=events_pb2.RunStaging(attempt=1)),
                report(run_id, "r", started=events_pb2.RunStarted(attempt=1)),
                report(run_id, "c1", checkpointed=checkpointed(run_id, 1, 1, 5)),
            ]
        )
    )
    bus.execute(ApplyAgentReport(report(run_id, "c2", checkpointed=checkpointed(run_id, 1, 2, 9))))
    head = store.head_position()
    bus.execute(ApplyAgentReport(report(run_id, "c2", checkpointed=checkpointed(run_id, 1, 2, 9))))  # redelivered
    assert store.head_position() == head
    run = bus.load(RUN, run_id)
    assert run.latest_checkpoint is not None and run.latest_checkpoint.checkpoint_id == "1-2"

    # Another agent's key cannot add a checkpoint to the run.
    with pytest.raises(DomainError, match="held by agent agent-1, not by agent agent-2"):
        bus.execute(
            ApplyAgentReport(report(run_id, "x", agent_id="agent-2", checkpointed=checkpointed(run_id, 1, 3, 12)))
        )

    # The attempt is lost; attempt 2 resumes from 1-2, and attempt 1's late checkpoint is refused.
    bus.execute(ExpireAttempt("agent-1", run_id, 1, "lease expired"))
    outcome = bus.execute(AssignRun(run_id, "agent-1", []))
    (assigned,) = outcome.events
    assert assigned.attempt == 2 and assigned.resume_from.checkpoint_id == "1-2"
    with pytest.raises(StaleAttempt):
        bus.execute(ApplyAgentReport(report(run_id, "late", checkpointed=checkpointed(run_id, 1, 3, 12))))
    assert bus.load(RUN, run_id).latest_checkpoint.checkpoint_id == "1-2"  # type: ignore[union-attr]
