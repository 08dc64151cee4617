"""Turns logged events into the RunUpdate messages of WatchRun and WatchExperiment."""

from __future__ import annotations

from google.protobuf.message import Message

from runyard.server.api.errors import decode_position
from runyard.server.domain.events import decode
from runyard.server.domain.metric_repeats import RepeatFilter
from runyard.server.store import RecordedEvent
from runyard.v1 import common_pb2, events_pb2, watch_pb2


def encode_cursor(position: int) -> str:
    return f"p{position}"


def decode_cursor(cursor: str) -> int:
    """Raises ValueError with a message naming the field when the cursor is not ours."""
    if not cursor:
        return 0
    if not cursor.startswith("p") or cursor == "p":
        shown = cursor if len(cursor) <= 40 else f"{cursor[:40]}..."
        raise ValueError(f"cursor: {shown!r} is not a cursor from a previous update")
    return decode_position(cursor[1:], "cursor", "a cursor from a previous update")


class UpdateBuilder:
    """Builds updates for one watch; remembers each run's last state for cancel requests.

    `repeats` drops the points of a resumed attempt that an earlier attempt
    already reported (metric_repeats): a watch shows each step once, as history does.
    """

    def __init__(self) -> None:
        self.states: dict[str, int] = {}
        self.repeats = RepeatFilter()

    def build(self, event: RecordedEvent) -> watch_pb2.RunUpdate | None:
        kind, _, run_id = event.stream_id.partition(":")
        if kind == "experiment":
            return self._search(event)
        if kind not in ("run", "run-logs", "run-metrics"):
            return None
        msg = decode(event.type, event.data)
        update = watch_pb2.RunUpdate(cursor=encode_cursor(event.position), run_id=run_id)
        update.time.FromDatetime(event.recorded_at)
        if isinstance(msg, events_pb2.RunStopRequested):
            # A rung decision (or the budget): the searcher's view of it, then the run's.
            update.search.CopyFrom(
                watch_pb2.SearchUpdate(
                    kind=watch_pb2.SearchUpdate.KIND_STOPPED,
                    rung=msg.rung,
                    level=msg.level,
                    value=msg.value,
                    reason=msg.reason,
                )
            )
            return update
        if isinstance(msg, events_pb2.RunLogged):
            update.logs.attempt = msg.attempt
            update.logs.lines.extend(msg.lines)
            return update
        if isinstance(msg, events_pb2.RunMetricsReported):
            points = self.repeats.kept(run_id, msg.attempt, msg.points, ((p.name, p.step) for p in msg.points))
            if not points:
                return None
            update.metrics.attempt = msg.attempt
            update.metrics.points.extend(points)
            return update
        status = self._status(run_id, msg)
        if status is None:
            return None
        update.status.CopyFrom(status)
        return update

    def _search(self, event: RecordedEvent) -> watch_pb2.RunUpdate | None:
        """A decision of the experiment's searcher (WatchExperiment), or None for other experiment events."""
        msg = decode(event.type, event.data)
        s = watch_pb2.SearchUpdate()
        run_id = ""
        if isinstance(msg, events_pb2.ExperimentRunAdded):
            s.kind, run_id = watch_pb2.SearchUpdate.KIND_TRIAL_STARTED, msg.run_id
            s.hyperparameters.update(msg.hyperparameters)
        elif isinstance(msg, events_pb2.RunPromoted):
            s.kind, run_id = watch_pb2.SearchUpdate.KIND_PROMOTED, msg.run_id
            s.rung, s.level, s.value = msg.rung, msg.level, msg.value
        elif isinstance(msg, events_pb2.ExperimentBestFound):
            s.kind, run_id, s.step, s.value = watch_pb2.SearchUpdate.KIND_NEW_BEST, msg.run_id, msg.step, msg.value
        elif isinstance(msg, events_pb2.ExperimentBudgetSpent):
            s.kind, s.reason = watch_pb2.SearchUpdate.KIND_BUDGET_SPENT, msg.reason
        elif isinstance(msg, events_pb2.ExperimentCompleted):
            s.kind, s.reason = watch_pb2.SearchUpdate.KIND_COMPLETED, msg.reason
        else:
            return None
        update = watch_pb2.RunUpdate(cursor=encode_cursor(event.position), run_id=run_id, search=s)
        update.time.FromDatetime(event.recorded_at)
        return update

    def _status(self, run_id: str, msg: Message) -> watch_pb2.RunStatusChange | None:
        s = watch_pb2.RunStatusChange()
        if isinstance(msg, events_pb2.RunCreated):
            s.state = common_pb2.RUN_STATE_QUEUED
        elif isinstance(msg, events_pb2.RunAssigned):
            s.state, s.attempt, s.agent_id = common_pb2.RUN_STATE_ASSIGNED, msg.attempt, msg.agent_id
        elif isinstance(msg, events_pb2.RunStaging):
            s.state, s.attempt = common_pb2.RUN_STATE_STAGING, msg.attempt
        elif isinstance(msg, events_pb2.RunStarted):
            s.state, s.attempt = common_pb2.RUN_STATE_RUNNING, msg.attempt
        elif isinstance(msg, events_pb2.RunUploading):
            s.state, s.attempt, s.exit_code = common_pb2.RUN_STATE_UPLOADING, msg.attempt, msg.exit_code
        elif isinstance(msg, events_pb2.RunCompleted):
            s.state, s.attempt, s.final = common_pb2.RUN_STATE_COMPLETED, msg.attempt, True
        elif isinstance(msg, events_pb2.RunFailed):
            s.state, s.attempt, s.final = common_pb2.RUN_STATE_FAILED, msg.attempt, True
            s.failure_reason, s.exit_code, s.message = msg.reason, msg.exit_code, msg.message
        elif isinstance(msg, events_pb2.RunRequeued):
            s.state, s.attempt = common_pb2.RUN_STATE_QUEUED, msg.attempt
            s.failure_reason, s.message = msg.reason, msg.message
        elif isinstance(msg, events_pb2.RunCancelRequested):
            s.state = self.states.get(run_id, common_pb2.RUN_STATE_UNSPECIFIED)  # type: ignore[assignment]
            s.cancel_requested, s.message = True, msg.reason
        elif isinstance(msg, events_pb2.RunCanceled):
            s.state, s.attempt, s.final, s.message = common_pb2.RUN_STATE_CANCELED, msg.attempt, True, msg.reason
        elif isinstance(msg, events_pb2.RunStoppedEarly):
            s.state, s.attempt, s.final, s.message = common_pb2.RUN_STATE_STOPPED_EARLY, msg.attempt, True, msg.reason
        elif isinstance(msg, events_pb2.RunPauseRequested):
            # Still on its agent until it stopped; not final: a paused run goes on after a resume.
            s.state = self.states.get(run_id, common_pb2.RUN_STATE_UNSPECIFIED)  # type: ignore[assignment]
            s.message = f"pausing: {msg.reason}" if msg.reason else "pausing"
        elif isinstance(msg, events_pb2.RunPaused):
            s.state, s.attempt, s.message = common_pb2.RUN_STATE_PAUSED, msg.attempt, msg.reason
        elif isinstance(msg, events_pb2.RunResumed):
            s.state, s.message = common_pb2.RUN_STATE_QUEUED, msg.reason
        else:
            return None
        self.states[run_id] = s.state
        return s
