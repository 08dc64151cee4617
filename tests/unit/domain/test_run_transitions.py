"""The run state machine, exhaustively: every starting state against every command.

Each pair either moves the run to the state DESIGN.md documents (with the one
event that records it), is a no-op (a redelivered report, a repeated cancel),
or is refused with IllegalTransition naming the state. Nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from google.protobuf.message import Message

from runyard.server.domain.checkpoint_layout import manifest_uri
from runyard.server.domain.errors import IllegalTransition
from runyard.server.domain.run import Run
from runyard.server.domain.run_states import RunStateValue, state_name
from runyard.v1 import common_pb2, events_pb2

from .runs import AGENT, OTHER_AGENT, PATHS, run_in

S = common_pb2


@dataclass(frozen=True)
class Next:
    state: RunStateValue
    event: type[Message]


NOOP = "no-op"
ILLEGAL = "illegal"
Outcome = Next | str

HOLDING = ["ASSIGNED", "STAGING", "RUNNING", "UPLOADING"]
HOLDING_CANCEL = [f"{s}+cancel" for s in HOLDING]
QUEUES = ["QUEUED", "REQUEUED"]
PAUSED = ["PAUSED", "PAUSED+ran"]
#: Holding runs the control plane asked to pause or preempt: they end the way the request says.
HOLDING_ASKED = ["RUNNING+pause", "RUNNING+preempt"]


def _each(labels: list[str], outcome: Outcome) -> dict[str, Outcome]:
    return dict.fromkeys(labels, outcome)


def _same_state(labels: list[str], event: type[Message]) -> dict[str, Outcome]:
    return {label: Next(getattr(S, "RUN_STATE_" + label.split("+")[0]), event) for label in labels}


COMMANDS: dict[str, Callable[[Run], list[Message]]] = {
    "assign": lambda r: r.assign(AGENT, ["0"]),
    "report staging": lambda r: r.report_staging(r.attempt),
    "report started": lambda r: r.report_started(r.attempt),
    "report uploading": lambda r: r.report_uploading(r.attempt, 0),
    "report completed": lambda r: r.report_completed(r.attempt, "s3://results/exp/run-test"),
    "report failed (user code)": lambda r: r.report_failed(r.attempt, S.FAILURE_REASON_USER_CODE, 2, "boom"),
    "report failed (infrastructure)": lambda r: r.report_failed(r.attempt, S.FAILURE_REASON_UPLOAD_ERROR, 0, ""),
    "cancel": lambda r: r.request_cancel("user"),
    "report canceled": lambda r: r.report_canceled(r.attempt, "user"),
    "agent lost": lambda r: r.agent_lost(AGENT),
    "another agent lost": lambda r: r.agent_lost(OTHER_AGENT),
    "pause": lambda r: r.request_pause("user"),
    "resume": lambda r: r.resume("user"),
    "preempt": lambda r: r.request_preempt("account b is below its fair share", "run-b", "fair-share", 60),
    "report checkpointed": lambda r: r.report_checkpointed(
        r.attempt,
        common_pb2.Checkpoint(
            checkpoint_id=f"{r.attempt}-9",
            run_id=r.run_id,
            attempt=r.attempt,
            step=5,
            manifest_uri=manifest_uri(r.spec.results_uri, f"{r.attempt}-9"),
        ),
    ),
}

#: What a stopped attempt of a run asked to pause / be preempted becomes.
_ASKED_ENDS = {
    "RUNNING+pause": Next(S.RUN_STATE_PAUSED, events_pb2.RunPaused),
    "RUNNING+preempt": Next(S.RUN_STATE_QUEUED, events_pb2.RunRequeued),
}

# Pairs not listed are refused with IllegalTransition.
TABLE: dict[str, dict[str, Outcome]] = {
    "assign": _each(QUEUES, Next(S.RUN_STATE_ASSIGNED, events_pb2.RunAssigned)),
    "report staging": {
        "ASSIGNED": Next(S.RUN_STATE_STAGING, events_pb2.RunStaging),
        "ASSIGNED+cancel": Next(S.RUN_STATE_STAGING, events_pb2.RunStaging),
        "STAGING": NOOP,
        "STAGING+cancel": NOOP,
    },
    "report started": {
        "STAGING": Next(S.RUN_STATE_RUNNING, events_pb2.RunStarted),
        "STAGING+cancel": Next(S.RUN_STATE_RUNNING, events_pb2.RunStarted),
        "RUNNING": NOOP,
        "RUNNING+cancel": NOOP,
        **_each(HOLDING_ASKED, NOOP),
    },
    "report uploading": {
        "RUNNING": Next(S.RUN_STATE_UPLOADING, events_pb2.RunUploading),
        "RUNNING+cancel": Next(S.RUN_STATE_UPLOADING, events_pb2.RunUploading),
        **_each(HOLDING_ASKED, Next(S.RUN_STATE_UPLOADING, events_pb2.RunUploading)),
        "UPLOADING": NOOP,
        "UPLOADING+cancel": NOOP,
    },
    "report completed": {
        "UPLOADING": Next(S.RUN_STATE_COMPLETED, events_pb2.RunCompleted),
        "UPLOADING+cancel": Next(S.RUN_STATE_COMPLETED, events_pb2.RunCompleted),
        "COMPLETED": NOOP,
    },
    "report failed (user code)": {
        **_each(HOLDING + HOLDING_CANCEL + HOLDING_ASKED, Next(S.RUN_STATE_FAILED, events_pb2.RunFailed)),
        "FAILED": NOOP,
        "REQUEUED": NOOP,
        **_each(PAUSED, NOOP),
    },
    "report failed (infrastructure)": {
        **_each(HOLDING, Next(S.RUN_STATE_QUEUED, events_pb2.RunRequeued)),
        # A run someone asked to stop is not retried.
        **_each(HOLDING_CANCEL, Next(S.RUN_STATE_FAILED, events_pb2.RunFailed)),
        **_ASKED_ENDS,
        "FAILED": NOOP,
        "REQUEUED": NOOP,
        **_each(PAUSED, NOOP),
    },
    "cancel": {
        **_each(QUEUES + PAUSED, Next(S.RUN_STATE_CANCELED, events_pb2.RunCanceled)),
        **_same_state(HOLDING + HOLDING_ASKED, events_pb2.RunCancelRequested),
        **_each(HOLDING_CANCEL, NOOP),
    },
    "report canceled": {
        **_each(HOLDING + HOLDING_CANCEL, Next(S.RUN_STATE_CANCELED, events_pb2.RunCanceled)),
        **_ASKED_ENDS,
        "CANCELED": NOOP,
        "CANCELED+stopped": NOOP,
        # The attempt's end is recorded already (re-queued, paused): a redelivered report.
        "REQUEUED": NOOP,
        **_each(PAUSED, NOOP),
    },
    "agent lost": {
        **_each(list(PATHS), NOOP),
        **_each(HOLDING, Next(S.RUN_STATE_QUEUED, events_pb2.RunRequeued)),
        **_each(HOLDING_CANCEL, Next(S.RUN_STATE_CANCELED, events_pb2.RunCanceled)),
        **_ASKED_ENDS,
    },
    "another agent lost": _each(list(PATHS), NOOP),
    "pause": {
        **_each(list(PATHS), NOOP),
        **_each(QUEUES, Next(S.RUN_STATE_PAUSED, events_pb2.RunPaused)),
        **_same_state([*HOLDING, "RUNNING+preempt"], events_pb2.RunPauseRequested),
    },
    "resume": {**_each(list(PATHS), NOOP), **_each(PAUSED, Next(S.RUN_STATE_QUEUED, events_pb2.RunResumed))},
    "preempt": {**_each(list(PATHS), NOOP), **_same_state(HOLDING, events_pb2.RunPreemptRequested)},
    "report checkpointed": _same_state(HOLDING + HOLDING_CANCEL + HOLDING_ASKED, events_pb2.RunCheckpointed),
}

PAIRS = [(label, command) for label in PATHS for command in COMMANDS]


def test_table_names_only_known_states_and_commands() -> None:
    assert set(TABLE) == set(COMMANDS)
    for outcomes in TABLE.values():
        assert set(outcomes) <= set(PATHS)


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


@pytest.mark.parametrize("label", ["COMPLETED", "FAILED", "CANCELED", "CANCELED+stopped"])
def test_cancel_of_a_finished_run_names_its_state(label: str) -> None:
    run, _ = run_in(label)
    with pytest.raises(IllegalTransition, match=rf"^run run-test is {label.split('+')[0]}; cannot cancel$"):
        run.request_cancel("too late")


def test_apply_refuses_an_illegal_event() -> None:
    """Replaying a log with an illegal transition fails loudly instead of inventing a state."""
    run, _ = run_in("COMPLETED")
    with pytest.raises(IllegalTransition):
        run.apply(events_pb2.RunStarted(attempt=run.attempt))
    queued, _ = run_in("QUEUED")
    with pytest.raises(IllegalTransition):
        queued.apply(events_pb2.RunCompleted(attempt=0))
