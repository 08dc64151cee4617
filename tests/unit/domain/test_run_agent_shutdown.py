"""An agent's graceful shutdown is an infrastructure event: the run goes back to the queue, uncharged."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runyard.server.domain.run import Run
from runyard.v1 import common_pb2, events_pb2

from .runs import AGENT, OTHER_AGENT, new_run, step

S = common_pb2
SHUTDOWN = S.FAILURE_REASON_AGENT_SHUTDOWN


def _running(max_restarts: int) -> tuple[Run, list]:  # type: ignore[type-arg]
    run, log = new_run(max_restarts=max_restarts)
    step(run, log, lambda r: r.assign(AGENT, ["0"]))
    step(run, log, lambda r: r.report_staging(r.attempt))
    step(run, log, lambda r: r.report_started(r.attempt))
    return run, log


@pytest.mark.parametrize("max_restarts", [0, 1, 3])
def test_a_shutdown_requeues_whatever_max_restarts_says_and_charges_nothing(max_restarts: int) -> None:
    run, log = _running(max_restarts)
    (event,) = step(run, log, lambda r: r.report_failed(1, SHUTDOWN, 143, "agent shutting down"))
    assert isinstance(event, events_pb2.RunRequeued) and event.reason == SHUTDOWN
    assert run.state == S.RUN_STATE_QUEUED and run.restarts == 0
    assert run.failure_reason == SHUTDOWN and run.message == "agent shutting down"
    assert Run.replay(log) == run
    step(run, log, lambda r: r.assign(OTHER_AGENT, ["1"]))
    assert run.attempt == 2


def test_shutdowns_never_use_up_the_restarts_left_for_real_failures() -> None:
    run, log = _running(1)
    for _ in range(5):
        step(run, log, lambda r: r.report_failed(r.attempt, SHUTDOWN, 143, ""))
        step(run, log, lambda r: r.assign(AGENT, ["0"]))
        step(run, log, lambda r: r.report_staging(r.attempt))
    assert run.restarts == 0
    (requeued,) = step(run, log, lambda r: r.report_failed(r.attempt, S.FAILURE_REASON_INTERNAL, 1, "disk"))
    assert isinstance(requeued, events_pb2.RunRequeued) and run.restarts == 1
    step(run, log, lambda r: r.assign(AGENT, ["0"]))
    (failed,) = step(run, log, lambda r: r.report_failed(r.attempt, S.FAILURE_REASON_INTERNAL, 1, "disk"))
    assert isinstance(failed, events_pb2.RunFailed) and run.state == S.RUN_STATE_FAILED


@pytest.mark.parametrize("ask", ["request_cancel", "request_stop"])
def test_a_cancel_or_stop_asked_still_wins(ask: str) -> None:
    run, log = _running(3)
    step(run, log, lambda r: getattr(r, ask)("user"))
    (event,) = step(run, log, lambda r: r.report_failed(1, SHUTDOWN, 143, "agent shutting down"))
    assert isinstance(event, events_pb2.RunFailed)
    assert run.state == S.RUN_STATE_FAILED


def test_a_redelivered_shutdown_report_records_nothing() -> None:
    run, log = _running(0)
    step(run, log, lambda r: r.report_failed(1, SHUTDOWN, 143, ""))
    assert run.report_failed(1, SHUTDOWN, 143, "") == []


def test_a_replayed_old_requeue_of_another_reason_still_counts() -> None:
    run, log = _running(2)
    step(run, log, lambda r: r.report_failed(1, S.FAILURE_REASON_AGENT_LOST, 0, "lost"))
    assert Run.replay(log).restarts == 1


@given(
    reasons=st.lists(
        st.sampled_from([SHUTDOWN, S.FAILURE_REASON_INTERNAL, S.FAILURE_REASON_AGENT_LOST, S.FAILURE_REASON_USER_CODE]),
        min_size=1,
        max_size=12,
    ),
    max_restarts=st.integers(0, 3),
)
def test_restarts_count_only_charged_requeues(reasons: list[int], max_restarts: int) -> None:
    run, log = _running(max_restarts)
    for reason in reasons:
        if run.is_terminal:
            break
        if run.state == S.RUN_STATE_QUEUED:
            step(run, log, lambda r: r.assign(AGENT, ["0"]))
        charged_before = run.restarts
        (event,) = step(run, log, lambda r, reason=reason: r.report_failed(r.attempt, reason, 1, ""))  # type: ignore[misc]
        if reason == SHUTDOWN:
            assert isinstance(event, events_pb2.RunRequeued) and run.restarts == charged_before
        elif reason == S.FAILURE_REASON_USER_CODE:
            assert isinstance(event, events_pb2.RunFailed)
        else:
            expect_requeue = charged_before < max_restarts
            assert isinstance(event, events_pb2.RunRequeued if expect_requeue else events_pb2.RunFailed)
    assert run.restarts <= max_restarts
    assert Run.replay(log) == run
