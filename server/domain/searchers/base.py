"""What every searcher shares: its inputs, its decisions, and the interface between them.

A searcher is pure domain code. It never reads a clock, a global random
generator or the database: its state is a function of the inputs it was fed,
in order. That is what makes an experiment survive a control-plane restart:
the driver that feeds it replays the experiment's input events from the log
into a fresh searcher and gets the same state, hence the same next decisions,
as a searcher that never stopped. A decision re-derived during replay is the
one already in the log, so the driver recognises it by its position in the
decision sequence and writes nothing twice.

Inputs (each maps onto one kind of logged event):

* `start()`: the experiment exists (ExperimentCreated).
* `on_metric(run_id, step, value)`: a point of the search metric, `step` in the
  time unit rungs are counted in (epochs or steps). The caller passes only the
  manifest's `search.metric`; everything else is no concern of a searcher.
* `on_run_ended(run_id, outcome)`: a run reached a terminal state.
* `on_close(reason)`: no more runs may start (cancel, budget spent).
* `on_run_paused(run_id)`: the run is PAUSED (RunPaused): it holds no GPU and
  can be resumed from its checkpoint.
* `on_run_resumed(run_id, rung)`: a paused run went back to the queue
  (RunResumed; `rung` 0 when nobody promoted it, e.g. a user's resume).

Decisions: `CreateTrial`, `StopRun`, `Promote`, `PauseRun`, `ResumeRun`,
`Complete`. A searcher counts a run it stopped or paused as gone at once, so
the trial that replaces it is created in the same breath and the freed GPU is
not left idle while the stopped run winds down. Only ASHA's pause variant
pauses and resumes; the other searchers ignore the pause inputs (a run paused
by its experiment's owner keeps its slot: it is still alive).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

from runyard.server.domain.ids import run_id_for
from runyard.server.domain.manifest_model import Scalar

Trial: TypeAlias = Mapping[str, Scalar]


class RunOutcome(enum.Enum):
    """How a run ended, as far as a searcher cares (all free the run's slot)."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    STOPPED_EARLY = "stopped_early"


# -- decisions ---------------------------------------------------------------


@dataclass(frozen=True)
class CreateTrial:
    """Start the run at `index` of the experiment with these hyperparameter values."""

    index: int
    run_id: str
    hyperparameters: Trial


@dataclass(frozen=True)
class StopRun:
    """Stop a run early: its result at rung `rung` (after `level` time units) did not make the cut."""

    run_id: str
    reason: str
    rung: int
    level: int
    value: float


@dataclass(frozen=True)
class Promote:
    """A run made the cut at rung `rung` and trains on towards the next rung."""

    run_id: str
    rung: int
    level: int
    value: float


@dataclass(frozen=True)
class PauseRun:
    """Hold a run that reached rung `rung` (after `level` time units, with `value`) with its checkpoint.

    It waits PAUSED, holding no GPU, until a promotion resumes it (`ResumeRun`)
    or the search ends and stops it.
    """

    run_id: str
    rung: int
    level: int
    value: float


@dataclass(frozen=True)
class ResumeRun:
    """Promote a paused run: it resumes from its checkpoint and trains on to rung `rung` (from 1).

    `level` is the time units it trains to (that rung's level, or max_resource
    past the last rung); `value` is its result at rung `rung - 1` that made the cut.
    """

    run_id: str
    rung: int
    level: int
    value: float


@dataclass(frozen=True)
class Complete:
    """The searcher has nothing left to start and every run it started has ended."""

    reason: str


Decision: TypeAlias = CreateTrial | StopRun | Promote | PauseRun | ResumeRun | Complete


# -- inputs, as values (for logs, tests and replay) ---------------------------


@dataclass(frozen=True)
class Started:
    pass


@dataclass(frozen=True)
class MetricReported:
    run_id: str
    step: int
    value: float


@dataclass(frozen=True)
class RunEnded:
    run_id: str
    outcome: RunOutcome


@dataclass(frozen=True)
class Closed:
    reason: str


@dataclass(frozen=True)
class Paused:
    run_id: str


@dataclass(frozen=True)
class Resumed:
    run_id: str
    rung: int = 0


SearcherInput: TypeAlias = Started | MetricReported | RunEnded | Closed | Paused | Resumed


class Searcher(Protocol):
    """The interface the experiment driver uses; see the module docstring for the contract."""

    def start(self) -> list[Decision]: ...

    def on_metric(self, run_id: str, step: int, value: float) -> list[Decision]: ...

    def on_run_ended(self, run_id: str, outcome: RunOutcome) -> list[Decision]: ...

    def on_close(self, reason: str) -> list[Decision]: ...

    def on_run_paused(self, run_id: str) -> list[Decision]: ...

    def on_run_resumed(self, run_id: str, rung: int) -> list[Decision]: ...

    def snapshot(self) -> object:
        """A comparable value of the whole state: equal snapshots make equal future decisions."""
        ...


def feed(searcher: Searcher, item: SearcherInput) -> list[Decision]:
    """Dispatch one input value to the searcher method it stands for."""
    if isinstance(item, Started):
        return searcher.start()
    if isinstance(item, MetricReported):
        return searcher.on_metric(item.run_id, item.step, item.value)
    if isinstance(item, RunEnded):
        return searcher.on_run_ended(item.run_id, item.outcome)
    if isinstance(item, Paused):
        return searcher.on_run_paused(item.run_id)
    if isinstance(item, Resumed):
        return searcher.on_run_resumed(item.run_id, item.rung)
    return searcher.on_close(item.reason)


def replay(searcher: Searcher, inputs: Iterable[SearcherInput]) -> list[Decision]:
    """Feed inputs in order; every decision made along the way, in order."""
    decisions: list[Decision] = []
    for item in inputs:
        decisions.extend(feed(searcher, item))
    return decisions


# -- the bookkeeping every searcher needs -------------------------------------


@dataclass(frozen=True)
class PoolSnapshot:
    started: bool
    created: int
    active: tuple[str, ...]
    closed: str | None
    completed: bool


@dataclass
class TrialPool:
    """Which trials exist and which still hold a slot, over a fixed sequence of trials.

    Trials are handed out in sequence order, never more than `max_parallel`
    active at once (None: all at once). Run ids come from `run_id_of(index)`,
    the experiment's own naming, so a decision is directly actionable.
    """

    trials: Sequence[Trial]
    max_parallel: int | None
    run_id_of: Callable[[int], str]
    started: bool = False
    created: int = 0
    #: Run ids that hold (or are about to hold) a slot, in creation order.
    active: dict[str, int] = field(default_factory=dict)
    index_of: dict[str, int] = field(default_factory=dict)
    closed: str | None = None
    completed: bool = False

    def start(self) -> list[Decision]:
        if self.started:
            return []
        self.started = True
        return self.refill()

    @property
    def has_free_slot(self) -> bool:
        return self.max_parallel is None or len(self.active) < self.max_parallel

    @property
    def can_create(self) -> bool:
        """A trial is left to create and the pool is open."""
        return self.closed is None and self.created < len(self.trials)

    def create_one(self) -> CreateTrial:
        """Create the next trial into a slot (the caller checked `can_create` and `has_free_slot`)."""
        index = self.created
        run_id = self.run_id_of(index)
        self.created += 1
        self.active[run_id] = index
        self.index_of[run_id] = index
        return CreateTrial(index=index, run_id=run_id, hyperparameters=dict(self.trials[index]))

    def refill(self) -> list[Decision]:
        """Create trials into free slots; complete once nothing is left to create or run."""
        if self.completed:
            return []
        decisions: list[Decision] = []
        while self.can_create and self.has_free_slot:
            decisions.append(self.create_one())
        if not self.active and (self.closed is not None or self.created == len(self.trials)):
            self.completed = True
            decisions.append(Complete(reason=self.closed or "every trial ended"))
        return decisions

    def release(self, run_id: str) -> list[Decision]:
        """The run gave its slot back (ended, or stopped by the searcher); start what fits."""
        if run_id not in self.active:
            return []
        del self.active[run_id]
        return self.refill()

    def close(self, reason: str) -> list[Decision]:
        if self.closed is not None or self.completed:
            return []
        self.closed = reason
        return self.refill() if self.started else []

    def snapshot(self) -> PoolSnapshot:
        return PoolSnapshot(
            started=self.started,
            created=self.created,
            active=tuple(self.active),
            closed=self.closed,
            completed=self.completed,
        )


def experiment_run_ids(experiment_id: str) -> Callable[[int], str]:
    """The run ids `Experiment.create` gives, so searcher decisions name the runs the log will hold."""
    return lambda index: run_id_for(experiment_id, index)
