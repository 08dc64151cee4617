"""Any sequence of commands, legal or not, leaves a run in a legal state its log reproduces."""

from __future__ import annotations

import copy

from google.protobuf.message import Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from runyard.server.domain.errors import DomainError
from runyard.server.domain.run import Run
from runyard.server.domain.run_states import HOLDING_SLOTS, TERMINAL, TRANSITIONS, UNCHARGED_REASONS
from runyard.v1 import common_pb2, events_pb2

from .runs import new_run

AGENTS = st.sampled_from(["agent-1", "agent-2"])
# Mostly the current attempt, so runs get far; sometimes a late or an early one.
ATTEMPTS = st.sampled_from(["current"] * 4 + ["previous", "next", "zero"])
REASONS = st.sampled_from(list(common_pb2.FailureReason.values()))
LIVE_STATES = set(common_pb2.RunState.values()) - {common_pb2.RUN_STATE_UNSPECIFIED}


class RunMachine(RuleBasedStateMachine):
    run: Run
    log: list[Message]

    @initialize(max_restarts=st.integers(min_value=0, max_value=3))
    def create(self, max_restarts: int) -> None:
        self.run, self.log = new_run(max_restarts)
        self.last_attempt = 0
        self.terminal_state: int | None = None
        self.stop_asked = False

    def _attempt(self, which: str) -> int:
        return {
            "current": self.run.attempt,
            "previous": self.run.attempt - 1,
            "next": self.run.attempt + 1,
        }.get(which, 0)

    def _decide(self, command: str, *args: object) -> None:
        before = copy.deepcopy(self.run)
        try:
            events: list[Message] = getattr(self.run, command)(*args)
        except DomainError:
            events = []
        assert self.run == before, f"{command} changed the run instead of returning events"
        for event in events:
            rule = TRANSITIONS[type(event)]
            assert self.run.state in rule.sources, f"{command} emitted {type(event).__name__} illegally"
            self.run.apply(event)
            self.log.append(event)

    def _happy_step(self) -> None:
        """The next step of a run that goes well, so that sequences reach every state."""
        run = self.run
        step = {
            common_pb2.RUN_STATE_QUEUED: ("assign", "agent-1", ["0"]),
            common_pb2.RUN_STATE_ASSIGNED: ("report_staging", run.attempt),
            common_pb2.RUN_STATE_STAGING: ("report_started", run.attempt),
            common_pb2.RUN_STATE_RUNNING: ("report_uploading", run.attempt, 0),
            common_pb2.RUN_STATE_UPLOADING: ("report_completed", run.attempt, ""),
        }.get(run.state)
        if step is not None:
            self._decide(str(step[0]), *step[1:])

    @rule()
    def advance(self) -> None:
        self._happy_step()

    @rule()
    def advance_further(self) -> None:
        self._happy_step()

    @rule(agent=AGENTS, gpus=st.lists(st.sampled_from("0123"), max_size=2, unique=True))
    def assign(self, agent: str, gpus: list[str]) -> None:
        self._decide("assign", agent, gpus)

    @rule(attempt=ATTEMPTS)
    def report_staging(self, attempt: str) -> None:
        self._decide("report_staging", self._attempt(attempt))

    @rule(attempt=ATTEMPTS)
    def report_started(self, attempt: str) -> None:
        self._decide("report_started", self._attempt(attempt))

    @rule(attempt=ATTEMPTS, exit_code=st.integers(-9, 2))
    def report_uploading(self, attempt: str, exit_code: int) -> None:
        self._decide("report_uploading", self._attempt(attempt), exit_code)

    @rule(attempt=ATTEMPTS)
    def report_completed(self, attempt: str) -> None:
        self._decide("report_completed", self._attempt(attempt), "s3://results/x")

    @rule(attempt=ATTEMPTS, reason=REASONS, exit_code=st.integers(-9, 2))
    def report_failed(self, attempt: str, reason: int, exit_code: int) -> None:
        self._decide("report_failed", self._attempt(attempt), reason, exit_code, "failed")

    @rule()
    def agent_shutdown(self) -> None:
        """An agent stopped gracefully: re-queued, uncharged, unless a cancel or a stop was asked."""
        before = copy.deepcopy(self.run)
        self._decide("report_failed", self.run.attempt, common_pb2.FAILURE_REASON_AGENT_SHUTDOWN, 143, "stopped")
        if before.state in HOLDING_SLOTS:
            if before.cancel_requested or before.stop_requested:
                assert self.run.state == common_pb2.RUN_STATE_FAILED
            else:
                assert self.run.state == common_pb2.RUN_STATE_QUEUED
                assert self.run.restarts == before.restarts

    @rule(reason=st.sampled_from(["", "user"]))
    def request_cancel(self, reason: str) -> None:
        self._decide("request_cancel", reason)

    @rule(reason=st.sampled_from(["asha", "budget"]), rung=st.integers(0, 3), value=st.floats(0, 1))
    def request_stop(self, reason: str, rung: int, value: float) -> None:
        self.stop_asked = True
        self._decide("request_stop", reason, rung, 3**rung, value)

    @rule(attempt=ATTEMPTS)
    def report_canceled(self, attempt: str) -> None:
        self._decide("report_canceled", self._attempt(attempt), "stopped")

    @rule(agent=AGENTS)
    def agent_lost(self, agent: str) -> None:
        self._decide("agent_lost", agent)

    @invariant()
    def state_is_legal(self) -> None:
        run = self.run
        assert run.state in LIVE_STATES
        assert run.attempt >= self.last_attempt, "attempt numbers never go back"
        self.last_attempt = run.attempt
        assert run.attempt == sum(isinstance(e, events_pb2.RunAssigned) for e in self.log)
        assert 0 <= run.restarts <= run.spec.max_restarts
        charged = [
            e
            for e in self.log
            if isinstance(e, events_pb2.RunRequeued) and e.reason not in UNCHARGED_REASONS
        ]
        assert run.restarts == len(charged), "only charged re-queues count against max_restarts"
        if run.state in HOLDING_SLOTS:
            assert run.agent_id and run.attempt >= 1
        if run.cancel_requested or run.stop_requested:
            assert run.state != common_pb2.RUN_STATE_QUEUED, "a run asked to stop is never queued again"
        if run.state == common_pb2.RUN_STATE_STOPPED_EARLY:
            assert self.stop_asked and not run.cancel_requested, "only the searcher stops a run early"
        if self.terminal_state is not None:
            assert run.state == self.terminal_state, "terminal states are absorbing"
        elif run.state in TERMINAL:
            self.terminal_state = run.state

    @invariant()
    def log_reproduces_the_run(self) -> None:
        assert self.run.version == len(self.log)
        assert Run.replay(self.log) == self.run


RunMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestRunStateMachine = RunMachine.TestCase
