"""The handler of what agents report: each report becomes the run command it stands for.

A report's event id makes a redelivered report a no-op; a report of an
attempt that is no longer current raises StaleAttempt; an agent reports only
on runs it was given.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import structlog
from google.protobuf.message import Message

from runyard.server.app import commands as c
from runyard.server.app.aggregates import RUN, change, load
from runyard.server.app.unit_of_work import UnitOfWork
from runyard.server.domain import events as ev
from runyard.server.domain.errors import DomainError
from runyard.server.domain.run import Run
from runyard.server.store import ANY, ExpectedVersion
from runyard.v1 import agent_pb2, events_pb2

log = structlog.get_logger(__name__)

#: The run event each transition report body asks for (its place in the run's life: run_states.is_ahead).
REPORTED_EVENTS: dict[str, type[Message]] = {
    "staging": events_pb2.RunStaging,
    "started": events_pb2.RunStarted,
    "uploading": events_pb2.RunUploading,
    "completed": events_pb2.RunCompleted,
    "failed": events_pb2.RunFailed,
    "canceled": events_pb2.RunCanceled,
}


def apply_report(cmd: c.ApplyAgentReport, uow: UnitOfWork) -> int:
    """Append what an agent reported; returns the position (0 when nothing was appended)."""
    report = cmd.report
    ids = _report_ids(report)
    body = report.WhichOneof("body")
    if body == "registered":
        registered = report.registered
        return uow.append(ev.agent_stream(registered.agent_id), [registered], ids=ids(1)).last_position
    run_id = report.run_id
    output = _output(report)
    if output is not None:
        stream, attempt, msg = output
        run = load(uow, RUN, run_id)
        _check_holder(run, report.agent_id)
        run.check_attempt(attempt)
        return uow.append(stream, [msg], ANY, run.experiment_id, ids(1)).last_position
    decide = _decision(report)
    if decide is None:
        log.warning("unknown report body", body=body, agent_id=report.agent_id)
        return 0
    reporter = report.agent_id

    def held_by_reporter(run: Run) -> list[Message]:
        _check_holder(run, reporter)
        return decide(run)

    return change(uow, RUN, run_id, held_by_reporter, ids).position


def apply_reports(cmd: c.ApplyAgentReports, uow: UnitOfWork) -> int:
    """Append several reports of one run, in order, in one transaction; returns the last position.

    What `apply_report` does for each, decided on the run as the earlier
    ones leave it, then stored with one commit: a run's end (uploading,
    its last output, completed) costs one turn of the log's write lock
    instead of three. Any report the run refuses raises before anything is
    stored, so the caller can fall back to one report at a time and treat
    each on its own; a concurrent change of the run raises ConcurrencyError.
    """
    reports = cmd.reports
    run_ids = {r.run_id for r in reports}
    if len(run_ids) != 1 or not reports[0].run_id:
        raise ValueError("apply_reports takes reports of one run")
    run = load(uow, RUN, reports[0].run_id)
    steps: list[tuple[str, list[Message], ExpectedVersion, list[uuid.UUID]]] = []
    for report in reports:
        ids = _report_ids(report)
        _check_holder(run, report.agent_id)
        output = _output(report)
        if output is not None:
            stream, attempt, msg = output
            run.check_attempt(attempt)
            steps.append((stream, [msg], ANY, ids(1)))
            continue
        decide = _decision(report)
        if decide is None:
            raise DomainError(f"unknown report body {report.WhichOneof('body')!r}")
        new = decide(run)
        if not new:
            continue
        steps.append((ev.run_stream(run.run_id), new, run.version, ids(len(new))))
        for msg in new:
            run.apply(msg)
    with uow.transaction() as tx:
        for stream, events, expected, event_ids in steps:
            tx.append(stream, events, expected, run.experiment_id, event_ids)
    return tx.last_position


def _report_ids(report: agent_pb2.AgentReport) -> Callable[[int], list[uuid.UUID]]:
    """The event ids of what a report records: derived from its id, so a redelivery stores nothing new."""
    base = (
        uuid.UUID(report.event_id)
        if _is_uuid(report.event_id)
        else uuid.uuid5(uuid.NAMESPACE_URL, f"runyard-report:{report.agent_id}:{report.event_id}")
    )
    return lambda n: [base] + [uuid.uuid5(base, str(i)) for i in range(1, n)]


def _output(report: agent_pb2.AgentReport) -> tuple[str, int, Message] | None:
    """(stream, attempt, event) of a report of a run's output, or None for a transition."""
    body = report.WhichOneof("body")
    if body not in ("logged", "metrics"):
        return None
    msg = report.logged if body == "logged" else report.metrics
    # Output is filed under the report's run: a body naming another run is refused, never filed there.
    if msg.run_id and msg.run_id != report.run_id:
        raise DomainError(f"a {body} report of run {report.run_id!r} names run {msg.run_id!r} in its body")
    msg.run_id = report.run_id
    stream = ev.run_logs_stream(report.run_id) if body == "logged" else ev.run_metrics_stream(report.run_id)
    return stream, msg.attempt, msg


def _decision(report: agent_pb2.AgentReport) -> Callable[[Run], list[Message]] | None:
    """The run command a transition report stands for (None for a body this server does not know)."""
    body = report.WhichOneof("body")
    if body == "staging":
        a = report.staging.attempt
        return lambda run: run.report_staging(a)
    if body == "started":
        a = report.started.attempt
        return lambda run: run.report_started(a)
    if body == "uploading":
        up = report.uploading
        return lambda run: run.report_uploading(up.attempt, up.exit_code)
    if body == "completed":
        done = report.completed
        return lambda run: run.report_completed(done.attempt, done.results_uri)
    if body == "failed":
        f = report.failed
        return lambda run: run.report_failed(f.attempt, f.reason, f.exit_code, f.message)
    if body == "canceled":
        c_ = report.canceled
        return lambda run: run.report_canceled(c_.attempt, c_.reason)
    if body == "checkpointed":
        ck = report.checkpointed
        return lambda run: run.report_checkpointed(ck.attempt, ck.checkpoint)
    return None


def _check_holder(run: Run, agent_id: str) -> None:
    """An agent reports only on runs it was given: another agent's key cannot move them."""
    if run.agent_id != agent_id:
        holder = f"agent {run.agent_id}" if run.agent_id else "no agent"
        raise DomainError(f"run {run.run_id} is held by {holder}, not by agent {agent_id}")


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
