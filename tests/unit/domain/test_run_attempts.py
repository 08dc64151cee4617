"""Attempts: numbering, fencing of late reports, re-queue with restarts, agent loss."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from google.protobuf.message import Message

from runyard.server.domain.errors import DomainError, IllegalTransition, StaleAttempt
from runyard.server.domain.run import Run
from runyard.v1 import common_pb2, events_pb2

from .runs import AGENT, OTHER_AGENT, PATHS, new_run, run_in, step

S = common_pb2

REPORTS: dict[str, Callable[[Run, int], list[Message]]] = {
    "staging": lambda r, a: r.report_staging(a),
    "started": lambda r, a: r.report_started(a),
    "uploading": lambda r, a: r.report_uploading(a, 0),
    "completed": lambda r, a: r.report_completed(a, "s3://x"),
    "failed": lambda r, a: r.report_failed(a, S.FAILURE_REASON_USER_CODE, 1, ""),
    "canceled": lambda r, a: r.report_canceled(a, ""),
}


def test_attempts_count_from_one_per_assignment() -> None:
    run, log = new_run(max_restarts=2)
    assert run.attempt == 0
    for expected in (1, 2, 3):
        (assigned,) = step(run, log, lambda r: r.assign(AGENT, ["0"]))
        assert isinstance(assigned, events_pb2.RunAssigned)
        assert assigned.attempt == expected == run.attempt
        if expected < 3:
            step(run, log, lambda r: r.report_failed(r.attempt, S.FAILURE_REASON_AGENT_LOST, 0, ""))
            assert run.state == S.RUN_STATE_QUEUED
    assert run.restarts == 2


@pytest.mark.parametrize("label", list(PATHS))
@pytest.mark.parametrize("report", list(REPORTS))
@pytest.mark.parametrize("offset", [-1, 1])
def test_a_report_for_another_attempt_is_refused_in_every_state(label: str, report: str, offset: int) -> None:
    run, _ = run_in(label)
    other = run.attempt + offset if run.attempt + offset >= 0 else run.attempt + 2
    with pytest.raises(StaleAttempt) as refused:
        REPORTS[report](run, other)
    assert (refused.value.current, refused.value.got) == (run.attempt, other)


def test_a_lost_agent_cannot_move_the_run_after_it_was_reassigned() -> None:
    run, log = new_run(max_restarts=1)
    step(run, log, lambda r: r.assign(AGENT, ["0"]))
    step(run, log, lambda r: r.report_staging(1))
    step(run, log, lambda r: r.agent_lost(AGENT))
    step(run, log, lambda r: r.assign(OTHER_AGENT, ["1"]))
    assert (run.attempt, run.agent_id, run.gpu_ids) == (2, OTHER_AGENT, ("1",))

    for report in REPORTS.values():
        with pytest.raises(StaleAttempt, match=r"^attempt 1 of run run-test is no longer current \(current: 2\)$"):
            report(run, 1)
    with pytest.raises(StaleAttempt):
        run.check_attempt(1)  # its log lines and metrics too
    run.check_attempt(2)
    assert run.agent_lost(AGENT) == []  # the old agent's loss no longer concerns this run


def test_infrastructure_failures_requeue_until_restarts_run_out() -> None:
    run, log = new_run(max_restarts=1)
    step(run, log, lambda r: r.assign(AGENT, []))
    (requeued,) = step(run, log, lambda r: r.report_failed(1, S.FAILURE_REASON_UPLOAD_ERROR, 0, "S3 503"))
    assert isinstance(requeued, events_pb2.RunRequeued)
    assert (run.state, run.restarts, run.message) == (S.RUN_STATE_QUEUED, 1, "S3 503")
    assert not run.holds_slots

    step(run, log, lambda r: r.assign(AGENT, []))
    assert (run.failure_reason, run.message) == (S.FAILURE_REASON_UNSPECIFIED, "")
    (failed,) = step(run, log, lambda r: r.report_failed(2, S.FAILURE_REASON_UPLOAD_ERROR, 0, "S3 503 again"))
    assert isinstance(failed, events_pb2.RunFailed)
    assert run.state == S.RUN_STATE_FAILED
    assert run.failure_reason == S.FAILURE_REASON_UPLOAD_ERROR
    assert run.is_terminal


@pytest.mark.parametrize(
    "reason",
    [
        S.FAILURE_REASON_USER_CODE,
        S.FAILURE_REASON_STAGING_ERROR,
        S.FAILURE_REASON_UNSUPPORTED,
        S.FAILURE_REASON_UNSPECIFIED,
    ],
)
def test_failures_of_the_users_making_are_final_even_with_restarts_left(reason: int) -> None:
    run, log = new_run(max_restarts=5)
    step(run, log, lambda r: r.assign(AGENT, []))
    step(run, log, lambda r: r.report_staging(1))
    (failed,) = step(run, log, lambda r: r.report_failed(1, reason, 3, "Traceback ..."))  # type: ignore[arg-type]
    assert isinstance(failed, events_pb2.RunFailed)
    assert (failed.exit_code, failed.message) == (3, "Traceback ...")
    assert (run.state, run.exit_code, run.restarts) == (S.RUN_STATE_FAILED, 3, 0)


def test_agent_loss_of_a_run_being_canceled_ends_it_canceled() -> None:
    run, log = run_in("RUNNING+cancel")
    (canceled,) = step(run, log, lambda r: r.agent_lost(AGENT))
    assert isinstance(canceled, events_pb2.RunCanceled)
    assert canceled.attempt == 1
    assert canceled.reason == "user"
    assert run.state == S.RUN_STATE_CANCELED


def test_cancel_from_the_queue_names_no_attempt() -> None:
    run, log = run_in("REQUEUED")
    (canceled,) = step(run, log, lambda r: r.request_cancel("no longer needed"))
    assert isinstance(canceled, events_pb2.RunCanceled)
    assert canceled.attempt == 0
    assert (run.state, run.cancel_reason) == (S.RUN_STATE_CANCELED, "no longer needed")


def test_a_redelivered_report_is_a_no_op() -> None:
    run, log = run_in("RUNNING")
    assert run.report_started(run.attempt) == []
    with pytest.raises(IllegalTransition, match="is RUNNING; cannot report staging"):
        run.report_staging(run.attempt)  # an older report of the same attempt, delivered late
    step(run, log, lambda r: r.report_uploading(r.attempt, 0))
    step(run, log, lambda r: r.report_completed(r.attempt, "s3://results/exp/run-test"))
    assert run.report_completed(run.attempt, "s3://results/exp/run-test") == []
    with pytest.raises(IllegalTransition, match="is COMPLETED; cannot report failed"):
        run.report_failed(run.attempt, S.FAILURE_REASON_AGENT_LOST, 0, "")


def test_completed_without_a_uri_records_the_runs_results_prefix() -> None:
    run, log = run_in("UPLOADING")
    step(run, log, lambda r: r.report_completed(r.attempt, ""))
    assert run.results_uri == "s3://results/exp/run-test"


def test_replay_needs_a_run_created_first() -> None:
    with pytest.raises(DomainError, match="opens with RunCreated"):
        Run.replay([events_pb2.RunStaging(attempt=1)])
    with pytest.raises(DomainError, match="not nothing"):
        Run.replay([])


def test_replay_refuses_an_out_of_order_attempt() -> None:
    _, log = new_run()
    with pytest.raises(StaleAttempt):
        Run.replay([*log, events_pb2.RunAssigned(attempt=2, agent_id=AGENT)])
    with pytest.raises(DomainError):
        Run.replay([*log, events_pb2.AgentLost(message="not a run event")])


def test_illegal_transition_message_names_run_state_and_action() -> None:
    run, _ = run_in("COMPLETED")
    with pytest.raises(IllegalTransition) as refused:
        run.request_cancel()
    assert str(refused.value) == "run run-test is COMPLETED; cannot cancel"
    assert (refused.value.run_id, refused.value.state, refused.value.action) == (
        "run-test",
        "COMPLETED",
        "cancel",
    )


def test_a_lease_ends_only_the_attempt_it_was_decided_for() -> None:
    """The scheduler decides a lease ended on a snapshot; by then the run may be on its next attempt, same agent."""
    run, log = new_run(max_restarts=2)
    step(run, log, lambda r: r.assign(AGENT, ["0"]))
    (requeued,) = step(run, log, lambda r: r.agent_lost(AGENT, "lease ended", attempt=1))
    assert isinstance(requeued, events_pb2.RunRequeued)
    assert (requeued.attempt, requeued.reason) == (1, common_pb2.FAILURE_REASON_AGENT_LOST)
    step(run, log, lambda r: r.assign(AGENT, ["0"]))
    step(run, log, lambda r: r.report_staging(2))
    assert run.agent_lost(AGENT, "lease ended", attempt=1) == []  # a stale decision ends nothing
    assert run.agent_lost(AGENT, "lease ended", attempt=2) != []
