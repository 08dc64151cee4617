"""The run state machine of DESIGN.md as data: which event moves a run from where to where.

QUEUED -> ASSIGNED -> STAGING -> RUNNING -> UPLOADING -> COMPLETED, with FAILED,
CANCELED and STOPPED_EARLY (the experiment's searcher stopped it) reachable
from every state that holds slots (CANCELED and STOPPED_EARLY from the queue
and from PAUSED too), RunRequeued taking an attempt that failed for
infrastructure reasons (or was preempted) back to QUEUED, and PAUSED: a run
held off the agents with its checkpoint (from the queue at once, from an agent
once it stopped), which RunResumed puts back in the queue. RunCheckpointed,
RunPreemptRequested and RunPauseRequested record without moving the run. Both
the commands (deciding) and `apply` (replaying) consult this one table, so the
log can never hold a transition the commands refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from google.protobuf.message import Message

from runyard.v1 import common_pb2, events_pb2

RunStateValue: TypeAlias = common_pb2.RunState.ValueType
FailureReasonValue: TypeAlias = common_pb2.FailureReason.ValueType

QUEUED = common_pb2.RUN_STATE_QUEUED
ASSIGNED = common_pb2.RUN_STATE_ASSIGNED
STAGING = common_pb2.RUN_STATE_STAGING
RUNNING = common_pb2.RUN_STATE_RUNNING
UPLOADING = common_pb2.RUN_STATE_UPLOADING
COMPLETED = common_pb2.RUN_STATE_COMPLETED
FAILED = common_pb2.RUN_STATE_FAILED
CANCELED = common_pb2.RUN_STATE_CANCELED
STOPPED_EARLY = common_pb2.RUN_STATE_STOPPED_EARLY
PAUSED = common_pb2.RUN_STATE_PAUSED

#: States in which an attempt holds slots (and GPUs) on an agent; billing runs in these.
HOLDING_SLOTS: frozenset[RunStateValue] = frozenset({ASSIGNED, STAGING, RUNNING, UPLOADING})
#: States of a run off the agents that a command may still end or move at once (attempt 0 events).
WAITING: frozenset[RunStateValue] = frozenset({QUEUED, PAUSED})
#: States a run never leaves.
TERMINAL: frozenset[RunStateValue] = frozenset({COMPLETED, FAILED, CANCELED, STOPPED_EARLY})

#: Failures that are not the user's doing: the attempt is worth another try while restarts remain.
#: USER_CODE, STAGING_ERROR (bad code or data URI) and UNSUPPORTED would fail the same way again.
INFRASTRUCTURE_REASONS: frozenset[FailureReasonValue] = frozenset(
    {
        common_pb2.FAILURE_REASON_AGENT_LOST,
        common_pb2.FAILURE_REASON_UPLOAD_ERROR,
        common_pb2.FAILURE_REASON_INTERNAL,
        common_pb2.FAILURE_REASON_AGENT_SHUTDOWN,
        common_pb2.FAILURE_REASON_PREEMPTED,
    }
)
#: Failures that are nobody's: the agent was stopped on purpose (an upgrade, `runyard down`) while
#: the attempt ran. Re-queued whatever max_restarts says, and never counted against it.
#: A preemption (the scheduler's own decision) is nobody's fault either.
UNCHARGED_REASONS: frozenset[FailureReasonValue] = frozenset(
    {common_pb2.FAILURE_REASON_AGENT_SHUTDOWN, common_pb2.FAILURE_REASON_PREEMPTED}
)


def state_name(state: RunStateValue) -> str:
    """The name a person reads: "COMPLETED", not "RUN_STATE_COMPLETED"."""
    return common_pb2.RunState.Name(state).removeprefix("RUN_STATE_")


@dataclass(frozen=True)
class Transition:
    """What an event needs and does: the states it may follow and the state it leaves.

    `target` None means the event records something without moving the run.
    """

    action: str
    sources: frozenset[RunStateValue]
    target: RunStateValue | None


TRANSITIONS: dict[type[Message], Transition] = {
    events_pb2.RunAssigned: Transition("assign", frozenset({QUEUED}), ASSIGNED),
    events_pb2.RunStaging: Transition("report staging", frozenset({ASSIGNED}), STAGING),
    events_pb2.RunStarted: Transition("report started", frozenset({STAGING}), RUNNING),
    events_pb2.RunUploading: Transition("report uploading", frozenset({RUNNING}), UPLOADING),
    events_pb2.RunCompleted: Transition("report completed", frozenset({UPLOADING}), COMPLETED),
    events_pb2.RunFailed: Transition("report failed", HOLDING_SLOTS, FAILED),
    events_pb2.RunRequeued: Transition("requeue", HOLDING_SLOTS, QUEUED),
    events_pb2.RunCancelRequested: Transition("cancel", HOLDING_SLOTS, None),
    events_pb2.RunCanceled: Transition("report canceled", HOLDING_SLOTS | WAITING, CANCELED),
    events_pb2.RunStopRequested: Transition("stop early", HOLDING_SLOTS, None),
    events_pb2.RunStoppedEarly: Transition("report stopped", HOLDING_SLOTS | WAITING, STOPPED_EARLY),
    events_pb2.RunCheckpointed: Transition("record a checkpoint", HOLDING_SLOTS, None),
    events_pb2.RunPreemptRequested: Transition("preempt", HOLDING_SLOTS, None),
    events_pb2.RunPauseRequested: Transition("pause", HOLDING_SLOTS, None),
    events_pb2.RunPaused: Transition("report paused", HOLDING_SLOTS | {QUEUED}, PAUSED),
    events_pb2.RunResumed: Transition("resume", frozenset({PAUSED}), QUEUED),
}

#: How far along its life a run is in each state: an end is as far as a run goes.
#: PAUSED ends its attempt: a report of that attempt arriving now is late, as after a terminal state.
PROGRESS: dict[RunStateValue, int] = {QUEUED: 0, ASSIGNED: 1, STAGING: 2, RUNNING: 3, UPLOADING: 4} | {
    state: 5 for state in TERMINAL | {PAUSED}
}


def is_ahead(state: str, event: type[Message]) -> bool:
    """Does `event` take a run in `state` (a name, as IllegalTransition says it) further than its next step?

    Then its predecessor is not stored yet (a report that came early), rather than the run
    having moved past it (a late one).
    """
    target = TRANSITIONS[event].target if event in TRANSITIONS else None
    if target is None:
        return False
    end = max(PROGRESS.values())
    try:
        now = PROGRESS.get(common_pb2.RunState.Value(f"RUN_STATE_{state}"), end)
    except ValueError:
        now = end
    return now < PROGRESS[target]
