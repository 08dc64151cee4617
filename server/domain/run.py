"""The Run aggregate: one run's state, rebuilt from its stream, and the decisions on it.

Commands never mutate: they check the current state and return the events
that would record the decision; the caller appends them under optimistic
concurrency and only `apply` (also used by `replay`) changes the state. So a
decision made on a state that another writer changed meanwhile is simply made
again, and replaying the stream always gives the state the commands saw.

Attempt fencing: every agent report names its attempt; a report of any other
attempt than the current one raises StaleAttempt, so a lost agent that comes
back cannot move a run it no longer owns. Redelivered reports are expected
(NATS delivers at least once): a report that repeats what the run already
recorded for the same attempt yields no event instead of an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from runyard.server.domain.checkpoint_layout import layout_error
from runyard.server.domain.errors import DomainError, IllegalTransition, StaleAttempt
from runyard.server.domain.run_states import (
    ASSIGNED,
    CANCELED,
    COMPLETED,
    FAILED,
    HOLDING_SLOTS,
    INFRASTRUCTURE_REASONS,
    PAUSED,
    QUEUED,
    RUNNING,
    STAGING,
    STOPPED_EARLY,
    TERMINAL,
    TRANSITIONS,
    UNCHARGED_REASONS,
    UPLOADING,
    WAITING,
    FailureReasonValue,
    RunStateValue,
    state_name,
)
from runyard.v1 import common_pb2, events_pb2


@dataclass
class Run:
    """A run as its stream says it is; `version` is the number of events applied."""

    run_id: str
    experiment_id: str
    account_id: str
    index: int
    spec: common_pb2.RunSpec
    state: RunStateValue = QUEUED
    #: The latest attempt: 0 before the first assignment, then 1, 2, ... per RunAssigned.
    attempt: int = 0
    agent_id: str = ""
    gpu_ids: tuple[str, ...] = ()
    cancel_requested: bool = False
    cancel_reason: str = ""
    #: The experiment's searcher asked the run to stop (RunStopRequested): it ends STOPPED_EARLY.
    stop_requested: bool = False
    #: Why the latest attempt ended without results (RunFailed or RunRequeued); reset per attempt.
    failure_reason: FailureReasonValue = common_pb2.FAILURE_REASON_UNSPECIFIED
    exit_code: int = 0
    message: str = ""
    results_uri: str = ""
    #: Re-queues charged so far (an agent's graceful shutdown is not); one is allowed while
    #: restarts < spec.max_restarts.
    restarts: int = 0
    #: The latest complete checkpoint (RunCheckpointed) of any attempt; None: none yet.
    latest_checkpoint: common_pb2.Checkpoint | None = None
    #: The scheduler is taking this attempt's GPUs (RunPreemptRequested): its stop re-queues it.
    preempt_requested: bool = False
    preempt: events_pb2.RunPreemptRequested | None = None
    #: The run should stop and wait PAUSED (RunPauseRequested): its stop pauses it.
    pause_requested: bool = False
    pause_reason: str = ""
    #: The ASHA rung the run is paused at (0: not paused for a rung).
    paused_rung: int = 0
    version: int = 0

    # -- reading the log -------------------------------------------------

    @staticmethod
    def create(run_id: str, experiment_id: str, account_id: str, index: int, spec: common_pb2.RunSpec) -> list[Message]:
        """The event that opens a run's stream; the run starts QUEUED."""
        return [
            events_pb2.RunCreated(
                run_id=run_id, experiment_id=experiment_id, account_id=account_id, index=index, spec=spec
            )
        ]

    @classmethod
    def replay(cls, events: Iterable[Message]) -> Run:
        stream = iter(events)
        first = next(stream, None)
        if not isinstance(first, events_pb2.RunCreated):
            opened = "nothing" if first is None else first.DESCRIPTOR.name
            raise DomainError(f"a run stream opens with RunCreated, not {opened}")
        spec = common_pb2.RunSpec()
        spec.CopyFrom(first.spec)
        run = cls(
            run_id=first.run_id,
            experiment_id=first.experiment_id,
            account_id=first.account_id,
            index=first.index,
            spec=spec,
            version=1,
        )
        for event in stream:
            run.apply(event)
        return run

    def apply(self, event: Message) -> None:
        """Record one event; refuses events the state machine does not allow here."""
        rule = TRANSITIONS.get(type(event))
        if rule is None:
            raise DomainError(f"run {self.run_id}: {event.DESCRIPTOR.name} is not a run event here")
        if self.state not in rule.sources:
            raise IllegalTransition(self.run_id, state_name(self.state), rule.action)
        self._check_event_attempt(event)
        self._record(event)
        if rule.target is not None:
            self.state = rule.target
        self.version += 1

    def _check_event_attempt(self, event: Message) -> None:
        if isinstance(event, events_pb2.RunAssigned):
            if event.attempt != self.attempt + 1:
                raise StaleAttempt(self.run_id, self.attempt + 1, event.attempt)
        elif (
            isinstance(event, events_pb2.RunCanceled | events_pb2.RunStoppedEarly | events_pb2.RunPaused)
            and self.state in WAITING
        ):
            if event.attempt != 0:
                raise StaleAttempt(self.run_id, 0, event.attempt)
        elif not isinstance(event, _REQUESTS):
            self.check_attempt(getattr(event, "attempt"))  # noqa: B009 - every other run event has one

    def _record(self, event: Message) -> None:
        if isinstance(event, events_pb2.RunAssigned):
            self.attempt = event.attempt
            self.agent_id = event.agent_id
            self.gpu_ids = tuple(event.gpu_ids)
            self.failure_reason = common_pb2.FAILURE_REASON_UNSPECIFIED
            self.exit_code = 0
            self.message = ""
            self.preempt_requested = False
            self.preempt = None
            self.pause_requested = False
        elif isinstance(event, events_pb2.RunCheckpointed):
            checkpoint = common_pb2.Checkpoint()
            checkpoint.CopyFrom(event.checkpoint)
            self.latest_checkpoint = checkpoint
        elif isinstance(event, events_pb2.RunPreemptRequested):
            self.preempt_requested = True
            self.preempt = event
        elif isinstance(event, events_pb2.RunPauseRequested):
            self.pause_requested = True
            self.pause_reason = event.reason
            self.paused_rung = event.rung
        elif isinstance(event, events_pb2.RunPaused):
            self.pause_requested = False
            self.pause_reason = event.reason or self.pause_reason
        elif isinstance(event, events_pb2.RunResumed):
            self.paused_rung = 0
        elif isinstance(event, events_pb2.RunUploading):
            self.exit_code = event.exit_code
        elif isinstance(event, events_pb2.RunCompleted):
            self.results_uri = event.results_uri
        elif isinstance(event, events_pb2.RunFailed):
            self.failure_reason = event.reason
            self.exit_code = event.exit_code
            self.message = event.message
        elif isinstance(event, events_pb2.RunRequeued):
            self.failure_reason = event.reason
            self.message = event.message
            if event.reason not in UNCHARGED_REASONS:
                self.restarts += 1
        elif isinstance(event, events_pb2.RunCancelRequested):
            self.cancel_requested = True
            self.cancel_reason = event.reason
        elif isinstance(event, events_pb2.RunCanceled):
            self.cancel_reason = event.reason or self.cancel_reason
        elif isinstance(event, events_pb2.RunStopRequested):
            self.stop_requested = True
            self.cancel_reason = event.reason
        elif isinstance(event, events_pb2.RunStoppedEarly):
            self.cancel_reason = event.reason or self.cancel_reason

    # -- what a run is -----------------------------------------------------

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def holds_slots(self) -> bool:
        """Slots (and GPUs) are reserved on `agent_id` for the current attempt."""
        return self.state in HOLDING_SLOTS

    @property
    def state_name(self) -> str:
        return state_name(self.state)

    def check_attempt(self, attempt: int) -> None:
        """Refuse anything an agent says about an attempt that is not the latest one."""
        if attempt != self.attempt:
            raise StaleAttempt(self.run_id, self.attempt, attempt)

    # -- commands: decide, never mutate ---------------------------------------

    def assign(self, agent_id: str, gpu_ids: Sequence[str], gpu_model: str = "") -> list[Message]:
        """Reserve slots on an agent for a new attempt; billing starts here (`gpu_model` is what it bills)."""
        if self.state != QUEUED:
            raise IllegalTransition(self.run_id, self.state_name, "assign")
        if self.cancel_requested:
            raise IllegalTransition(self.run_id, "QUEUED with a cancel requested", "assign")
        assigned = events_pb2.RunAssigned(
            attempt=self.attempt + 1, agent_id=agent_id, gpu_ids=list(gpu_ids), gpu_model=gpu_model
        )
        resume = self.resume_from
        if resume is not None:
            assigned.resume_from.CopyFrom(resume)  # what the attempt stages, recorded: `runyard show` says it
        return [assigned]

    def report_staging(self, attempt: int) -> list[Message]:
        return self._advance(
            attempt, "report staging", ASSIGNED, STAGING, lambda: events_pb2.RunStaging(attempt=attempt)
        )

    def report_started(self, attempt: int) -> list[Message]:
        return self._advance(
            attempt, "report started", STAGING, RUNNING, lambda: events_pb2.RunStarted(attempt=attempt)
        )

    def report_uploading(self, attempt: int, exit_code: int = 0) -> list[Message]:
        return self._advance(
            attempt,
            "report uploading",
            RUNNING,
            UPLOADING,
            lambda: events_pb2.RunUploading(attempt=attempt, exit_code=exit_code),
        )

    def report_completed(self, attempt: int, results_uri: str = "") -> list[Message]:
        """Results are stored; an empty URI means the run's own results prefix."""
        return self._advance(
            attempt,
            "report completed",
            UPLOADING,
            COMPLETED,
            lambda: events_pb2.RunCompleted(attempt=attempt, results_uri=results_uri or self.spec.results_uri),
        )

    def _advance(
        self,
        attempt: int,
        action: str,
        source: RunStateValue,
        target: RunStateValue,
        event: Callable[[], Message],
    ) -> list[Message]:
        self.check_attempt(attempt)
        if self.state == target:
            return []  # a redelivered report
        if self.state != source:
            raise IllegalTransition(self.run_id, self.state_name, action)
        return [event()]

    def report_failed(
        self, attempt: int, reason: FailureReasonValue, exit_code: int = 0, message: str = ""
    ) -> list[Message]:
        """End the attempt: back to the queue for an infrastructure failure while restarts
        remain, or for an agent's graceful shutdown always and uncharged (unless somebody
        asked to cancel or stop the run), otherwise the run fails for good."""
        self.check_attempt(attempt)
        if self.state in (FAILED, PAUSED) or (self.state == QUEUED and self.attempt > 0):
            return []  # this attempt's end is already recorded: a redelivered report
        if not self.holds_slots:
            raise IllegalTransition(self.run_id, self.state_name, "report failed")
        asked = self.pause_requested or self.preempt_requested
        if reason in INFRASTRUCTURE_REASONS and asked and not (self.cancel_requested or self.stop_requested):
            return [self._stopped(attempt)]
        retry = (
            reason in INFRASTRUCTURE_REASONS
            and (reason in UNCHARGED_REASONS or self.restarts < self.spec.max_restarts)
            and not (self.cancel_requested or self.stop_requested)
        )
        if retry:
            return [events_pb2.RunRequeued(attempt=attempt, reason=reason, message=message)]
        return [events_pb2.RunFailed(attempt=attempt, reason=reason, exit_code=exit_code, message=message)]

    def request_cancel(self, reason: str = "") -> list[Message]:
        """A queued run is canceled at once; a run on an agent is asked to stop, and
        is CANCELED when the agent reports it stopped (or the agent is lost)."""
        if self.state in WAITING:
            return [events_pb2.RunCanceled(attempt=0, reason=reason)]
        if self.holds_slots:
            return [] if self.cancel_requested else [events_pb2.RunCancelRequested(reason=reason)]
        raise IllegalTransition(self.run_id, self.state_name, "cancel")

    def request_stop(self, reason: str, rung: int = 0, level: int = 0, value: float = 0.0) -> list[Message]:
        """The experiment's searcher stops the run: at once from the queue, else when its agent has stopped it.

        Nothing to do for a run that has ended or is already stopping (a cancel
        asked first wins: the run ends CANCELED).
        """
        if self.is_terminal or self.stop_requested or self.cancel_requested:
            return []
        if self.state in WAITING:
            return [events_pb2.RunStoppedEarly(attempt=0, reason=reason)]
        return [events_pb2.RunStopRequested(reason=reason, rung=rung, level=level, value=value)]

    def report_canceled(self, attempt: int, reason: str = "") -> list[Message]:
        """The agent stopped the attempt: CANCELED, or STOPPED_EARLY when the searcher asked for the stop."""
        self.check_attempt(attempt)
        if self.state in (CANCELED, STOPPED_EARLY, PAUSED) or (self.state == QUEUED and self.attempt > 0):
            return []  # this attempt's end is already recorded: a redelivered report
        if not self.holds_slots:
            raise IllegalTransition(self.run_id, self.state_name, "report canceled")
        return [self._stopped(attempt, reason)]

    def _stopped(self, attempt: int, reason: str = "") -> Message:
        """What an attempt the agent stopped on our request becomes: cancel beats stop beats pause beats preempt."""
        if not (self.cancel_requested or self.stop_requested):
            if self.pause_requested:
                return events_pb2.RunPaused(attempt=attempt, reason=self.pause_reason)
            if self.preempt_requested and self.preempt is not None:
                return events_pb2.RunRequeued(
                    attempt=attempt, reason=common_pb2.FAILURE_REASON_PREEMPTED, message=self.preempt.reason
                )
        if self.stop_requested and not self.cancel_requested:
            return events_pb2.RunStoppedEarly(attempt=attempt, reason=self.cancel_reason)
        return events_pb2.RunCanceled(attempt=attempt, reason=reason or self.cancel_reason)

    def agent_lost(self, agent_id: str, message: str = "", attempt: int | None = None) -> list[Message]:
        """The attempt's lease ended (its agent's heartbeats stopped listing it, or stopped): end it,
        as an infrastructure failure. With `attempt`, only that attempt: a decision taken on a
        snapshot never ends a later attempt of the run."""
        if not self.holds_slots or self.agent_id != agent_id:
            return []
        if attempt is not None and attempt != self.attempt:
            return []
        if self.cancel_requested or self.stop_requested or self.pause_requested or self.preempt_requested:
            return [self._stopped(self.attempt)]
        return self.report_failed(
            self.attempt,
            common_pb2.FAILURE_REASON_AGENT_LOST,
            message=message or f"agent {agent_id} was lost",
        )

    # -- checkpoints, preemption, pause ----------------------------------------

    def report_checkpointed(self, attempt: int, checkpoint: common_pb2.Checkpoint) -> list[Message]:
        """The agent stored a complete checkpoint of this attempt; a redelivered report records nothing."""
        self.check_attempt(attempt)
        latest = self.latest_checkpoint
        if latest is not None and latest.checkpoint_id == checkpoint.checkpoint_id:
            return []
        if not self.holds_slots:
            raise IllegalTransition(self.run_id, self.state_name, "record a checkpoint")
        if checkpoint.attempt != attempt or checkpoint.run_id != self.run_id:
            raise DomainError(
                f"run {self.run_id}: checkpoint {checkpoint.checkpoint_id!r} names run "
                f"{checkpoint.run_id!r} attempt {checkpoint.attempt}, not attempt {attempt} of this run"
            )
        misplaced = layout_error(self.spec.results_uri, attempt, checkpoint.checkpoint_id, checkpoint.manifest_uri)
        if misplaced is not None:
            raise DomainError(f"run {self.run_id}: {misplaced}")
        return [events_pb2.RunCheckpointed(attempt=attempt, checkpoint=checkpoint)]

    @property
    def resume_from(self) -> common_pb2.Checkpoint | None:
        """What the next attempt stages into $CHECKPOINT_DIR: its own latest checkpoint, else the fork's."""
        if self.latest_checkpoint is not None:
            return self.latest_checkpoint
        return self.spec.start_from if self.spec.HasField("start_from") else None

    def request_preempt(self, reason: str, by_run_id: str, rule: str, grace_seconds: int) -> list[Message]:
        """The scheduler takes this attempt's GPUs: nothing to do unless the run holds slots and
        nobody asked it to stop for another reason already."""
        if not self.holds_slots or self.spec.not_preemptible:
            return []
        if self.preempt_requested or self.pause_requested or self.cancel_requested or self.stop_requested:
            return []
        return [
            events_pb2.RunPreemptRequested(reason=reason, by_run_id=by_run_id, rule=rule, grace_seconds=grace_seconds)
        ]

    def request_pause(self, reason: str, rung: int = 0) -> list[Message]:
        """Hold the run: from the queue at once, from an agent once it stopped (with a last checkpoint).
        Nothing for a run that has ended, is paused, or is already stopping."""
        if self.is_terminal or self.state == PAUSED:
            return []
        if self.state == QUEUED:
            if self.cancel_requested:
                return []
            return [events_pb2.RunPaused(attempt=0, reason=reason)]
        if self.pause_requested or self.cancel_requested or self.stop_requested:
            return []
        return [events_pb2.RunPauseRequested(reason=reason, rung=rung)]

    def resume(self, reason: str = "", rung: int = 0) -> list[Message]:
        """A paused run goes back to the queue; nothing for a run that is not paused."""
        if self.state != PAUSED:
            return []
        return [events_pb2.RunResumed(reason=reason, rung=rung)]


#: Events a command records without naming an attempt: they are about whichever attempt is current.
_REQUESTS = (
    events_pb2.RunCancelRequested,
    events_pb2.RunStopRequested,
    events_pb2.RunPreemptRequested,
    events_pb2.RunPauseRequested,
    events_pb2.RunResumed,
)
