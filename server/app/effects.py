"""What a committed event sets off after its commit, by event type: the table the bus dispatches from.

The scheduler is woken by every event that may change a placement decision
(submits, cancels, ends that free GPUs, requeues, agents registered, lost or
drained, plans changed), and by nothing else: not by a run's output (log
lines, metric points), not by steps that keep a run's GPUs held (staging,
started, uploading), not by its own assignments (the scheduler wakes its next
cycle itself when the policy may have more to place). A run asked to stop
(canceled by a user or its experiment, or stopped early by the searcher) gets
a cancel sent to the agent holding it. A run asked to pause (its experiment
paused) gets a cancel with the run's preemption grace and the reason, so the
agent stops it with SIGTERM, waits the grace and takes a last checkpoint; a
run that has paused is settled (resumed at once if its experiment was resumed
before the pause landed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message

from runyard.server.app.bus import Effect
from runyard.server.app.unit_of_work import Committed
from runyard.server.domain import events as ev
from runyard.server.domain.experiment import EXPERIMENT_PAUSE
from runyard.v1 import events_pb2

#: Events that change nothing the scheduler decides on: they have no wake-up.
NO_DECISION: frozenset[type[Message]] = frozenset(
    {
        events_pb2.RunLogged,
        events_pb2.RunMetricsReported,
        events_pb2.RunStaging,
        events_pb2.RunStarted,
        events_pb2.RunUploading,
        events_pb2.RunAssigned,
    }
)
#: Events that ask the agent holding a run to stop it.
STOP_ON_AGENT: frozenset[type[Message]] = frozenset({events_pb2.RunCancelRequested, events_pb2.RunStopRequested})

_RUN_STREAM = ev.run_stream("")


def run_id_of(stream: str) -> str:
    """The run a run stream ("run:<id>") belongs to."""
    return stream.removeprefix(_RUN_STREAM)


def effects(
    wake_scheduler: Callable[[], Any],
    stop_on_agent: Callable[..., Awaitable[None]],
    settle_paused: Callable[[str], Awaitable[Any]] | None = None,
) -> dict[type[Message], list[Effect]]:
    """The effect table of a replica: `wake_scheduler()` must be safe to call from any thread.

    `stop_on_agent(run_id)` sends a plain cancel; `stop_on_agent(run_id, reason=..., graceful=True)`
    one with the run's preemption grace. `settle_paused(run_id)` runs SettlePausedRun.
    """
    table: dict[type[Message], list[Effect]] = {}

    def wake(_: Committed) -> None:
        wake_scheduler()

    def stop(committed: Committed) -> Awaitable[None]:
        return stop_on_agent(run_id_of(committed.stream))

    for event_type in ev.EVENT_TYPES.values():
        if event_type not in NO_DECISION:
            table.setdefault(event_type, []).append(wake)
    for event_type in STOP_ON_AGENT:
        table.setdefault(event_type, []).append(stop)

    def pause(committed: Committed) -> Awaitable[None]:
        reason = getattr(committed.event, "reason", "") or EXPERIMENT_PAUSE
        return stop_on_agent(run_id_of(committed.stream), reason=reason, graceful=True)

    table.setdefault(events_pb2.RunPauseRequested, []).append(pause)
    if settle_paused is not None:
        settle = settle_paused

        def settled(committed: Committed) -> Awaitable[Any] | None:
            if getattr(committed.event, "reason", "") != EXPERIMENT_PAUSE:
                return None
            return settle(run_id_of(committed.stream))

        table.setdefault(events_pb2.RunPaused, []).append(settled)
    return table
