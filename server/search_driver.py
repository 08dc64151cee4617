"""Feeds experiments' searchers from the log and records what they decide.

One driver acts at a time: the scheduler's leader's (`active`), like ingest.
When a replica starts leading it starts over from position 0: it reads the
inputs (`search_state.INPUT_TYPES`) in log order into fresh searchers,
which re-derive every decision already made, in the same order, with the same
numbers. A decision's event id is `event_id_for(experiment, "decision", n)`;
ids already in the log (read once at the start) are skipped, and an append of
one that raced in meanwhile is a no-op. So a control-plane restart or a
leader change mid-experiment neither loses nor repeats a decision, and the
searcher goes on exactly as if nothing had happened.

Decisions become events: a new trial is ExperimentRunAdded + RunCreated (the
scheduler then queues and places it like any run), a stop is RunStopRequested
(and a cancel message to the agent, which ends the run STOPPED_EARLY), a
promotion RunPromoted, a new best ExperimentBestFound, the end
ExperimentCompleted; ASHA's pause variant pauses a run at a rung
(RunPauseRequested with `rung` = the rung it waits to be promoted to, then
the agent stops it with a checkpoint and it is PAUSED) and promotes it by
resuming it (RunResumed with the rung it now trains to). Budgets need a clock: while live the driver checks them
about every second and records ExperimentBudgetSpent, whose consequences are
decided when it is read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from google.protobuf.message import Message

from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import AddTrial, PauseRun, RecordForExperiment, ResumeRun, StopRunEarly
from runyard.server.app.errors import NotFound
from runyard.server.domain import events as ev
from runyard.server.domain import searchers
from runyard.server.domain.errors import DomainError
from runyard.server.domain.search_state import INPUT_TYPES, NewBest, Numbered, Searches
from runyard.server.domain.searchers import Complete, CreateTrial, Promote, StopRun
from runyard.server.store import EventStore
from runyard.v1 import events_pb2

log = structlog.get_logger(__name__)

BATCH = 2000
TICK_S = 1.0
#: What the driver records: read once when it starts leading, so re-derived decisions are not written again.
DECISION_TYPES = (
    events_pb2.ExperimentRunAdded,
    events_pb2.RunPromoted,
    events_pb2.ExperimentBestFound,
    events_pb2.ExperimentCompleted,
    events_pb2.ExperimentBudgetSpent,
    events_pb2.RunStopRequested,
    events_pb2.RunStoppedEarly,
)
#: What ASHA's pause variant records: read with DECISION_TYPES at the start, but not among them, as an
#: experiment's pause and resume (and an agent's report, for RunPaused) record these types too.
PAUSE_DECISION_TYPES = (events_pb2.RunPauseRequested, events_pb2.RunPaused, events_pb2.RunResumed)
#: Why ASHA's pause variant pauses and resumes runs (RunPauseRequested.reason, RunResumed.reason).
ASHA_REASON = "asha"


def decision_event_id(experiment_id: str, number: int) -> uuid.UUID:
    return ev.event_id_for(experiment_id, "decision", str(number))


def budget_event_id(experiment_id: str) -> uuid.UUID:
    return ev.event_id_for(experiment_id, "budget")


def _type_names(types: tuple[type[Message], ...]) -> list[str]:
    return [t.DESCRIPTOR.full_name for t in types]


class SearchDriver:
    def __init__(self, store: EventStore, bus: MessageBus, active: Callable[[], bool] = lambda: True) -> None:
        self._bus = bus
        self.active = active
        self._store = store
        self._input_types = [
            t for t in _type_names(INPUT_TYPES) if t != events_pb2.ExperimentCreated.DESCRIPTOR.full_name
        ]
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._leading = False
        self._reset()

    def _reset(self) -> None:
        self.searches = Searches()
        self._after = 0
        self._known: set[uuid.UUID] = set()
        self._budgets_asked: set[str] = set()

    def _on_commit(self, _position: int) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        unsubscribe = self._store.on_commit(self._on_commit)
        try:
            while not stop.is_set():
                self._wake.clear()
                if not self.active():
                    self._leading = False
                else:
                    try:
                        await self.step()
                    except Exception:
                        log.exception("experiment driver step failed; retrying")
                        await asyncio.sleep(TICK_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), TICK_S)
        finally:
            unsubscribe()

    async def step(self) -> None:
        """Feed everything new, record the decisions (the bus sends the stops); check budgets."""
        if not self._leading:
            await asyncio.to_thread(self._start_over)
            self._leading = True
        await asyncio.to_thread(self._catch_up)

    # -- in a worker thread ---------------------------------------------------------

    def _start_over(self) -> None:
        self._reset()
        after = 0
        names = _type_names(DECISION_TYPES + PAUSE_DECISION_TYPES)
        while batch := self._store.read_all(after, BATCH, types=names):
            self._known.update(e.event_id for e in batch)
            after = batch[-1].position
        log.info("experiment driver: replaying the log", decisions_recorded=len(self._known))

    def _catch_up(self) -> None:
        """Feed every new input of a live experiment (or a new one) in log order; record what they decide.

        Only live experiments' events are read (finished ones are skipped in
        the database, metric batches included); when an ExperimentCreated
        adds an experiment, the batch stops there and the next read includes it.
        """
        opening = events_pb2.ExperimentCreated.DESCRIPTOR.full_name
        while True:
            batch = self._store.read_followed(
                self._after,
                BATCH,
                openers=[opening],
                types=self._input_types,
                correlation_ids=self.searches.live_ids(),
            )
            for event in batch:
                self._after = event.position
                if event.type != opening and not self.searches.follows(event.correlation_id):
                    continue
                msg = ev.decode(event.type, event.data)
                for numbered in self.searches.feed(event.stream_id, event.correlation_id, msg, event.recorded_at):
                    self._record(numbered)
                if event.type == opening and event.correlation_id in self.searches:
                    break  # a new live experiment: read on with it included
            else:
                if len(batch) < BATCH:
                    break
        self._check_budgets()

    def _check_budgets(self) -> None:
        for experiment_id, reason in self.searches.budgets_spent(datetime.now(UTC)):
            if experiment_id in self._budgets_asked:
                continue
            self._budgets_asked.add(experiment_id)
            log.info("experiment budget spent", experiment_id=experiment_id, reason=reason)
            self._bus.execute(
                RecordForExperiment(
                    experiment_id, events_pb2.ExperimentBudgetSpent(reason=reason), budget_event_id(experiment_id)
                )
            )

    def _record(self, numbered: Numbered) -> None:
        event_id = decision_event_id(numbered.experiment_id, numbered.number)
        if event_id in self._known:
            return
        experiment_id, action = numbered.experiment_id, numbered.action
        execute = self._bus.execute
        try:
            if isinstance(action, CreateTrial):
                execute(AddTrial(experiment_id, action.index, action.hyperparameters, event_id))
            elif isinstance(action, StopRun):
                execute(StopRunEarly(action.run_id, action, event_id))  # RunStopRequested: the bus sends the stop
            elif isinstance(action, searchers.PauseRun):
                # Paused at rung k, waiting for a promotion to rung k + 1 (> 0: an ASHA pause).
                execute(PauseRun(action.run_id, ASHA_REASON, action.rung + 1, event_id))
            elif isinstance(action, searchers.ResumeRun):
                execute(ResumeRun(action.run_id, ASHA_REASON, action.rung, event_id))
            elif isinstance(action, Promote):
                promoted = events_pb2.RunPromoted(
                    run_id=action.run_id, rung=action.rung, level=action.level, value=action.value
                )
                execute(RecordForExperiment(experiment_id, promoted, event_id))
            elif isinstance(action, NewBest):
                best = events_pb2.ExperimentBestFound(run_id=action.run_id, step=action.step, value=action.value)
                execute(RecordForExperiment(experiment_id, best, event_id))
            elif isinstance(action, Complete):
                completed = events_pb2.ExperimentCompleted(reason=action.reason)
                execute(RecordForExperiment(experiment_id, completed, event_id))
        except (NotFound, DomainError) as exc:
            # A decision on a run that moved on (it ended meanwhile): nothing to record.
            log.info("searcher decision not applicable", experiment_id=experiment_id, error=str(exc))
        self._known.add(event_id)
