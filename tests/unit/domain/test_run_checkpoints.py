"""Checkpoints, preemption and pause on the Run aggregate: what the next attempt starts from, and what a stop costs."""

from __future__ import annotations

import re

import pytest

from runyard.server.domain.checkpoint_layout import manifest_uri
from runyard.server.domain.errors import DomainError, StaleAttempt
from runyard.server.domain.run import Run
from runyard.v1 import common_pb2, events_pb2

from .runs import AGENT, new_run, step


def _running(run: Run, log: list) -> None:  # type: ignore[type-arg]
    step(run, log, lambda r: r.assign(AGENT, ["0"]))
    step(run, log, lambda r: r.report_staging(r.attempt))
    step(run, log, lambda r: r.report_started(r.attempt))


def _checkpoint(run: Run, seq: int, step_: int) -> common_pb2.Checkpoint:
    cid = f"{run.attempt}-{seq}"
    return common_pb2.Checkpoint(
        checkpoint_id=cid,
        run_id=run.run_id,
        attempt=run.attempt,
        step=step_,
        manifest_uri=manifest_uri(run.spec.results_uri, cid),
    )


def test_the_next_attempt_starts_from_the_latest_checkpoint_of_any_attempt() -> None:
    run, log = new_run(max_restarts=2)
    assert run.resume_from is None
    _running(run, log)
    step(run, log, lambda r: r.report_checkpointed(r.attempt, _checkpoint(r, 1, 100)))
    step(run, log, lambda r: r.report_checkpointed(r.attempt, _checkpoint(r, 2, 200)))
    step(run, log, lambda r: r.agent_lost(AGENT))
    assert run.state == common_pb2.RUN_STATE_QUEUED
    assert run.resume_from is not None and run.resume_from.checkpoint_id == "1-2"
    assert Run.replay(log).resume_from == run.resume_from


def test_a_redelivered_checkpoint_report_records_nothing() -> None:
    run, log = new_run()
    _running(run, log)
    ckpt = _checkpoint(run, 1, 10)
    step(run, log, lambda r: r.report_checkpointed(r.attempt, ckpt))
    assert run.report_checkpointed(run.attempt, ckpt) == []


def test_a_checkpoint_of_another_attempt_or_run_is_refused() -> None:
    run, log = new_run()
    _running(run, log)
    with pytest.raises(StaleAttempt):
        run.report_checkpointed(run.attempt + 1, _checkpoint(run, 1, 10))
    foreign = common_pb2.Checkpoint(checkpoint_id="1-1", run_id="run-other", attempt=run.attempt, step=1)
    with pytest.raises(DomainError, match="run-other"):
        run.report_checkpointed(run.attempt, foreign)


def test_a_fork_starts_from_its_source_until_it_has_its_own_checkpoint() -> None:
    run, log = new_run()
    source = common_pb2.Checkpoint(checkpoint_id="3-4", run_id="run-source", attempt=3, step=40)
    run.spec.start_from.CopyFrom(source)
    assert run.resume_from == source
    _running(run, log)
    step(run, log, lambda r: r.report_checkpointed(r.attempt, _checkpoint(r, 1, 50)))
    assert run.resume_from is not None and run.resume_from.run_id == "run-test"


def test_preemption_requeues_without_spending_a_restart_however_often() -> None:
    run, log = new_run(max_restarts=0)
    for _ in range(3):
        _running(run, log)
        step(run, log, lambda r: r.request_preempt("b below its share", "run-b", "fair-share", 30))
        (requeued,) = step(run, log, lambda r: r.report_canceled(r.attempt, ""))
        assert isinstance(requeued, events_pb2.RunRequeued)
        assert requeued.reason == common_pb2.FAILURE_REASON_PREEMPTED
        assert requeued.message == "b below its share"
    assert run.state == common_pb2.RUN_STATE_QUEUED and run.restarts == 0


def test_a_run_that_must_not_be_preempted_is_not() -> None:
    run, log = new_run()
    run.spec.not_preemptible = True
    _running(run, log)
    assert run.request_preempt("b below its share", "run-b", "fair-share", 30) == []


def test_a_cancel_during_a_preemption_cancels() -> None:
    run, log = new_run()
    _running(run, log)
    step(run, log, lambda r: r.request_preempt("b below its share", "run-b", "fair-share", 30))
    step(run, log, lambda r: r.request_cancel("user"))
    (ended,) = step(run, log, lambda r: r.report_canceled(r.attempt, ""))
    assert isinstance(ended, events_pb2.RunCanceled)


def test_pause_then_resume_goes_back_to_the_queue_with_the_checkpoint() -> None:
    run, log = new_run()
    _running(run, log)
    step(run, log, lambda r: r.report_checkpointed(r.attempt, _checkpoint(r, 1, 7)))
    step(run, log, lambda r: r.request_pause("experiment paused", rung=2))
    (paused,) = step(run, log, lambda r: r.report_canceled(r.attempt, ""))
    assert isinstance(paused, events_pb2.RunPaused) and paused.reason == "experiment paused"
    assert run.state == common_pb2.RUN_STATE_PAUSED and run.paused_rung == 2
    step(run, log, lambda r: r.resume("promoted", rung=2))
    assert run.state == common_pb2.RUN_STATE_QUEUED and run.paused_rung == 0
    assert run.resume_from is not None and run.resume_from.step == 7
    assert Run.replay(log) == run


@pytest.mark.parametrize(
    ("cid", "uri", "why"),
    [
        ("1-1", "s3://other-account/secrets/checkpoints/1-1.json", "names manifest"),
        ("1-1", "s3://results/exp/run-test/checkpoints/../../run-other/checkpoints/1-1.json", "names manifest"),
        ("1-1", "", "names manifest"),
        ("2-1", "s3://results/exp/run-test/checkpoints/2-1.json", "not <attempt>-<seq> of attempt 1"),
        ("1-x", "s3://results/exp/run-test/checkpoints/1-x.json", "not <attempt>-<seq>"),
    ],
)
def test_an_agent_cannot_point_the_next_attempt_outside_the_runs_results(cid: str, uri: str, why: str) -> None:
    """The next attempt is staged by whichever agent gets it: a checkpoint must lie under the run's own results."""
    run, log = new_run()
    _running(run, log)
    forged = common_pb2.Checkpoint(checkpoint_id=cid, run_id=run.run_id, attempt=run.attempt, step=1, manifest_uri=uri)
    with pytest.raises(DomainError, match=re.escape(why)):
        run.report_checkpointed(run.attempt, forged)
    assert run.resume_from is None
