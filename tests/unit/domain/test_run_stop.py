"""Stopping a run early (the experiment's searcher, or its budget): every state against every command.

A queued run ends STOPPED_EARLY at once; a run on an agent is asked to stop
(RunStopRequested) and ends STOPPED_EARLY when the agent reports it stopped or
is lost. A cancel asked by a person wins over a stop; an ended run, or one
already stopping, gives nothing to do; a stop-requested run is never retried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from google.protobuf.message import Message

from runyard.server.domain.errors import IllegalTransition, StaleAttempt
from runyard.server.domain.run import Run
from runyard.server.domain.run_states import HOLDING_SLOTS, TERMINAL, WAITING, RunStateValue, state_name
from runyard.v1 import common_pb2, events_pb2

from .runs import AGENT, OTHER_AGENT, PATHS, Path, new_run, step

S = common_pb2

_STOP: Path = [lambda r: r.request_stop("asha", 1, 3, 0.42)]
_CANCEL: Path = [lambda r: r.request_cancel("user")]
HOLDING = ["ASSIGNED", "STAGING", "RUNNING", "UPLOADING"]

#: The paths of `runs.PATHS`, and those through a stop. Runs allow one restart.
STOP_PATHS: dict[str, Path] = {
    **PATHS,
    **{f"{label}+stop": [*PATHS[label], *_STOP] for label in HOLDING},
    "RUNNING+stop+cancel": [*PATHS["RUNNING"], *_STOP, *_CANCEL],
    "STOPPED_EARLY": _STOP,
    "STOPPED_EARLY+requeued": [*PATHS["REQUEUED"], *_STOP],
    "STOPPED_EARLY+stopped": [*PATHS["RUNNING"], *_STOP, lambda r: r.report_canceled(r.attempt, "stopped")],
}


def run_in(label: str) -> tuple[Run, list[Message]]:
    run, log = new_run(max_restarts=1)
    for decide in STOP_PATHS[label]:
        assert step(run, log, decide), f"path to {label} made no progress"
    return run, log


@dataclass(frozen=True)
class Next:
    state: RunStateValue
    event: type[Message]


NOOP = "no-op"
ILLEGAL = "illegal"
Outcome = Next | str

COMMANDS: dict[str, Callable[[Run], list[Message]]] = {
    "stop": lambda r: r.request_stop("asha", 2, 9, 0.5),
    "assign": lambda r: r.assign(AGENT, ["0"]),
    "report staging": lambda r: r.report_staging(r.attempt),
    "report started": lambda r: r.report_started(r.attempt),
    "report uploading": lambda r: r.report_uploading(r.attempt, 0),
    "report completed": lambda r: r.report_completed(r.attempt, "s3://results/exp/run-test"),
    "report failed (user code)": lambda r: r.report_failed(r.attempt, S.FAILURE_REASON_USER_CODE, 2, "boom"),
    "report failed (infrastructure)": lambda r: r.report_failed(r.attempt, S.FAILURE_REASON_AGENT_LOST, 0, ""),
    "cancel": lambda r: r.request_cancel("user"),
    "report canceled": lambda r: r.report_canceled(r.attempt, "stopped"),
    "agent lost": lambda r: r.agent_lost(AGENT),
    "another agent lost": lambda r: r.agent_lost(OTHER_AGENT),
}

STOPPING = [f"{s}+stop" for s in HOLDING]
STOPPED = ["STOPPED_EARLY", "STOPPED_EARLY+requeued", "STOPPED_EARLY+stopped"]
ENDED = ["COMPLETED", "FAILED", "CANCELED", "CANCELED+stopped", *STOPPED]
QUEUES = ["QUEUED", "REQUEUED"]


def _each(labels: list[str], outcome: Outcome) -> dict[str, Outcome]:
    return dict.fromkeys(labels, outcome)


def _stays(labels: list[str], event: type[Message]) -> dict[str, Outcome]:
    return {label: Next(getattr(S, "RUN_STATE_" + label.split("+")[0]), event) for label in labels}


def _advance(source: str, target: str, event: type[Message]) -> dict[str, Outcome]:
    """A report moves a stopping run on like any other (the agent may not have seen the stop yet)."""
    return {
        f"{source}+stop": Next(getattr(S, f"RUN_STATE_{target}"), event),
        f"{target}+stop": NOOP,
    }


# Only the labels with a stop in their path, plus the "stop" command against every label;
# pairs not listed are refused with IllegalTransition.
TABLE: dict[str, dict[str, Outcome]] = {
    "stop": {
        # A paused run ends at once, as a queued one does; a stop beats a pause or preemption under way.
        **_each([*QUEUES, "PAUSED", "PAUSED+ran"], Next(S.RUN_STATE_STOPPED_EARLY, events_pb2.RunStoppedEarly)),
        **_stays([*HOLDING, "RUNNING+pause", "RUNNING+preempt"], events_pb2.RunStopRequested),
        **_each([f"{s}+cancel" for s in HOLDING], NOOP),
        **_each(STOPPING, NOOP),
        "RUNNING+stop+cancel": NOOP,
        **_each(ENDED, NOOP),
    },
    "assign": {},
    "report staging": _advance("ASSIGNED", "STAGING", events_pb2.RunStaging),
    "report started": {**_advance("STAGING", "RUNNING", events_pb2.RunStarted), "RUNNING+stop+cancel": NOOP},
    "report uploading": {
        **_advance("RUNNING", "UPLOADING", events_pb2.RunUploading),
        "RUNNING+stop+cancel": Next(S.RUN_STATE_UPLOADING, events_pb2.RunUploading),
    },
    "report completed": {"UPLOADING+stop": Next(S.RUN_STATE_COMPLETED, events_pb2.RunCompleted)},
    "report failed (user code)": {
        **_each([*STOPPING, "RUNNING+stop+cancel"], Next(S.RUN_STATE_FAILED, events_pb2.RunFailed)),
    },
    # Restarts remain, yet a run the searcher stopped is not worth another attempt.
    "report failed (infrastructure)": {
        **_each([*STOPPING, "RUNNING+stop+cancel"], Next(S.RUN_STATE_FAILED, events_pb2.RunFailed)),
    },
    "cancel": {**_stays(STOPPING, events_pb2.RunCancelRequested), "RUNNING+stop+cancel": NOOP},
    "report canceled": {
        **_each(STOPPING, Next(S.RUN_STATE_STOPPED_EARLY, events_pb2.RunStoppedEarly)),
        "RUNNING+stop+cancel": Next(S.RUN_STATE_CANCELED, events_pb2.RunCanceled),
        **_each(STOPPED, NOOP),
    },
    "agent lost": {
        **_each(STOPPING, Next(S.RUN_STATE_STOPPED_EARLY, events_pb2.RunStoppedEarly)),
        "RUNNING+stop+cancel": Next(S.RUN_STATE_CANCELED, events_pb2.RunCanceled),
        **_each(STOPPED, NOOP),
    },
    "another agent lost": _each([*STOPPING, "RUNNING+stop+cancel", *STOPPED], NOOP),
}

STOP_LABELS = [label for label in STOP_PATHS if label not in PATHS]
PAIRS = [(label, "stop") for label in STOP_PATHS] + [
    (label, command) for label in STOP_LABELS for command in COMMANDS if command != "stop"
]


def test_table_names_only_known_states_and_commands() -> None:
    assert set(TABLE) == set(COMMANDS)
    for outcomes in TABLE.values():
        assert set(outcomes) <= set(STOP_PATHS)


@pytest.mark.parametrize(("label", "command"), PAIRS, ids=[f"{lbl}-{c}" for lbl, c in PAIRS])
def test_transition(label: str, command: str) -> None:
    run, log = run_in(label)
    before = (run.state, run.version)
    expected = TABLE[command].get(label, ILLEGAL)

    if expected == ILLEGAL:
        with pytest.raises(IllegalTransition) as refused:
            COMMANDS[command](run)
        assert f"is {state_name(run.state)}" in str(refused.value)
        assert (run.state, run.version) == before
        return

    events = COMMANDS[command](run)
    assert (run.state, run.version) == before, "a command must not change the run"
    if expected == NOOP:
        assert events == []
        return
    assert isinstance(expected, Next)
    assert [type(e) for e in events] == [expected.event]
    run.apply(events[0])
    assert state_name(run.state) == state_name(expected.state)
    assert Run.replay([*log, *events]) == run


# -- what the events say --------------------------------------------------------------


def test_a_queued_run_is_stopped_at_once_with_attempt_zero() -> None:
    run, log = run_in("QUEUED")
    assert run.request_stop("budget") == [events_pb2.RunStoppedEarly(attempt=0, reason="budget")]
    step(run, log, lambda r: r.request_stop("budget"))
    assert (run.state, run.is_terminal, run.holds_slots) == (S.RUN_STATE_STOPPED_EARLY, True, False)
    assert run.cancel_reason == "budget"
    assert Run.replay(log) == run


def test_a_requeued_run_is_stopped_from_the_queue_as_attempt_zero() -> None:
    """The attempt that ran has ended; the stop concerns no agent, so it names attempt 0."""
    run, _ = run_in("REQUEUED")
    assert run.attempt == 1
    assert run.request_stop("asha", 0, 1, 0.1) == [events_pb2.RunStoppedEarly(attempt=0, reason="asha")]


@pytest.mark.parametrize("label", HOLDING)
def test_a_run_on_an_agent_is_asked_to_stop_and_ends_stopped_early(label: str) -> None:
    run, log = run_in(label)
    assert run.request_stop("asha", 1, 3, 0.42) == [
        events_pb2.RunStopRequested(reason="asha", rung=1, level=3, value=0.42)
    ]
    step(run, log, lambda r: r.request_stop("asha", 1, 3, 0.42))
    assert (run.state_name, run.stop_requested, run.holds_slots) == (label, True, True)
    assert run.request_stop("budget") == [], "a second stop asks nothing more"
    # The agent stops it; its own reason does not replace the searcher's.
    assert run.report_canceled(run.attempt, "killed by agent") == [
        events_pb2.RunStoppedEarly(attempt=run.attempt, reason="asha")
    ]
    step(run, log, lambda r: r.report_canceled(r.attempt, "killed by agent"))
    assert (run.state, run.holds_slots) == (S.RUN_STATE_STOPPED_EARLY, False)
    assert run.report_canceled(run.attempt) == [], "a redelivered report records nothing"
    assert Run.replay(log) == run


def test_a_lost_agent_ends_a_stopping_run_stopped_early_not_requeued() -> None:
    run, _ = run_in("RUNNING+stop")
    assert run.restarts < run.spec.max_restarts, "a restart would be left"
    assert run.agent_lost(AGENT) == [events_pb2.RunStoppedEarly(attempt=1, reason="asha")]
    assert run.agent_lost(OTHER_AGENT) == []


def test_a_cancel_asked_first_wins_over_a_stop() -> None:
    run, _ = run_in("RUNNING+cancel")
    assert run.request_stop("asha", 1, 3, 0.1) == []
    assert run.report_canceled(run.attempt) == [events_pb2.RunCanceled(attempt=1, reason="user")]


def test_a_cancel_asked_after_a_stop_ends_the_run_canceled_with_the_cancel_reason() -> None:
    run, _ = run_in("RUNNING+stop+cancel")
    assert (run.stop_requested, run.cancel_requested) == (True, True)
    assert run.report_canceled(run.attempt) == [events_pb2.RunCanceled(attempt=1, reason="user")]
    assert run.agent_lost(AGENT) == [events_pb2.RunCanceled(attempt=1, reason="user")]


def test_a_stopping_run_that_finishes_anyway_completes() -> None:
    run, log = run_in("UPLOADING+stop")
    step(run, log, lambda r: r.report_completed(r.attempt, ""))
    assert run.state == S.RUN_STATE_COMPLETED
    assert run.request_stop("asha") == []


# -- what apply (replay) accepts ----------------------------------------------------------


@pytest.mark.parametrize("label", list(STOP_PATHS))
def test_apply_accepts_a_stop_request_only_while_the_run_holds_slots(label: str) -> None:
    run, log = run_in(label)
    event = events_pb2.RunStopRequested(reason="asha")
    if run.state in HOLDING_SLOTS:
        run.apply(event)
        assert run.stop_requested
        assert Run.replay([*log, event]) == run
    else:
        with pytest.raises(IllegalTransition, match=f"is {run.state_name}; cannot stop early"):
            run.apply(event)


@pytest.mark.parametrize("label", list(STOP_PATHS))
def test_apply_refuses_stopped_early_after_the_run_ended(label: str) -> None:
    run, _ = run_in(label)
    attempt = 0 if run.state in WAITING else run.attempt
    event = events_pb2.RunStoppedEarly(attempt=attempt, reason="asha")
    if run.state in TERMINAL:
        with pytest.raises(IllegalTransition, match=f"is {run.state_name}; cannot report stopped"):
            run.apply(event)
    else:
        run.apply(event)
        assert run.state == S.RUN_STATE_STOPPED_EARLY


@pytest.mark.parametrize(("label", "attempt"), [("QUEUED", 1), ("REQUEUED", 1), ("REQUEUED", 2)])
def test_stopped_early_from_the_queue_must_name_attempt_zero(label: str, attempt: int) -> None:
    run, _ = run_in(label)
    with pytest.raises(StaleAttempt):
        run.apply(events_pb2.RunStoppedEarly(attempt=attempt))
    assert run.state == S.RUN_STATE_QUEUED


def test_stopped_early_of_another_attempt_is_fenced_off() -> None:
    run, log = run_in("REQUEUED")
    step(run, log, lambda r: r.assign(AGENT, ["0"]))
    step(run, log, lambda r: r.request_stop("asha"))
    assert run.attempt == 2
    for stale in (0, 1, 3):
        with pytest.raises(StaleAttempt):
            run.apply(events_pb2.RunStoppedEarly(attempt=stale))
        with pytest.raises(StaleAttempt):
            run.report_canceled(stale)
    assert run.state == S.RUN_STATE_ASSIGNED
    run.apply(events_pb2.RunStoppedEarly(attempt=2))
    assert run.state == S.RUN_STATE_STOPPED_EARLY


def test_a_stop_request_names_no_attempt_and_is_never_fenced() -> None:
    """The searcher decides on the run, not on one of its attempts."""
    run, _ = run_in("REQUEUED")
    run.apply(events_pb2.RunAssigned(attempt=2, agent_id=AGENT, gpu_ids=["0"]))
    run.apply(events_pb2.RunStopRequested(reason="budget"))
    assert (run.stop_requested, run.cancel_reason) == (True, "budget")
