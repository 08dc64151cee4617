"""Experiments as their searchers see them: the log's events in, numbered decisions out.

The search driver (`runyard.server.search_driver`) reads the log in position
order and hands every event here; this module decides, with no I/O and no
clock, what the experiment's searcher is told and what it decided. Because
the inputs are log events in log order, a driver that starts over from
position 0 (a restart, another replica taking over) rebuilds the same
searchers and re-derives the same decisions in the same order. Each decision
gets the next number of its experiment, and the driver turns (experiment,
number) into a deterministic event id, so a decision already recorded is
recognised and never recorded twice.

What is followed: searched experiments (`is_searched`: their searcher adds the
runs) and experiments with a time or GPU-hour budget. The budget needs a
clock, so it is checked by the driver (`Searches.budgets_spent(now)`), which
then records ExperimentBudgetSpent; the decisions that follow (close the
searcher, stop the runs still going) are made when that event is read back,
so they too are a function of the log alone.

GPU time is counted as billing counts it (`domain.billing`): from RunAssigned
to the attempt's end (RunPaused included), times its GPUs, from the events'
recorded times. A paused run has not ended: it counts against max_parallel
and the searcher waits for it, as for a queued one (ASHA's pause variant,
which pauses runs itself, frees their slots instead). RunPaused and
RunResumed are searcher inputs too: that variant promotes only a run whose
pause the log confirmed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from google.protobuf.message import Message

from runyard.server.domain.experiment_facts import manifest_of
from runyard.server.domain.manifest_model import Manifest
from runyard.server.domain.metric_repeats import RepeatFilter
from runyard.server.domain.searchers import (
    Complete,
    CreateTrial,
    PauseRun,
    Promote,
    ResumeRun,
    RunOutcome,
    Searcher,
    StopRun,
    searcher_for,
)
from runyard.v1 import events_pb2

#: Why the runs of an experiment whose budget is spent are stopped.
BUDGET_STOP = "budget"


@dataclass(frozen=True)
class NewBest:
    """A run reported the best search-metric value of the experiment so far."""

    run_id: str
    step: int
    value: float


Action = CreateTrial | StopRun | Promote | PauseRun | ResumeRun | Complete | NewBest


@dataclass(frozen=True)
class Numbered:
    """The `number`-th decision of an experiment (from 0): its event id derives from the pair."""

    experiment_id: str
    number: int
    action: Action


_ENDINGS: dict[type[Message], RunOutcome] = {
    events_pb2.RunCompleted: RunOutcome.COMPLETED,
    events_pb2.RunFailed: RunOutcome.FAILED,
    events_pb2.RunCanceled: RunOutcome.CANCELED,
    events_pb2.RunStoppedEarly: RunOutcome.STOPPED_EARLY,
}

#: The event types the driver reads (everything else in the log is no input).
INPUT_TYPES: tuple[type[Message], ...] = (
    events_pb2.ExperimentCreated,
    events_pb2.ExperimentRunAdded,
    events_pb2.ExperimentCancelRequested,
    events_pb2.ExperimentBudgetSpent,
    events_pb2.RunAssigned,
    events_pb2.RunRequeued,
    events_pb2.RunPaused,
    events_pb2.RunResumed,
    events_pb2.RunMetricsReported,
    *_ENDINGS,
)


@dataclass
class _RunUse:
    gpus: int = 0
    #: Recorded time of the current attempt's RunAssigned; None while it holds no GPUs.
    since: datetime | None = None
    ended: bool = False


@dataclass
class ExperimentSearch:
    """One followed experiment: its searcher (None for a budget-only experiment), runs and GPU time."""

    experiment_id: str
    manifest: Manifest
    created_at: datetime
    searcher: Searcher | None
    runs: dict[str, _RunUse] = field(default_factory=dict)
    decisions: int = 0
    best: tuple[float, str, int] | None = None
    gpu_seconds: float = 0.0
    budget_spent: bool = False
    completed: bool = False
    #: Its searcher raised: the experiment was completed with the reason, and nothing more is asked of it.
    failed: bool = False

    @property
    def metric(self) -> str | None:
        return self.manifest.search.metric

    def number(self, actions: Iterable[Action]) -> list[Numbered]:
        out = []
        for action in actions:
            out.append(Numbered(self.experiment_id, self.decisions, action))
            self.decisions += 1
            if isinstance(action, Complete):
                self.completed = True
        return out

    @property
    def finished(self) -> bool:
        """Nothing the log says about it can lead to a decision any more."""
        if self.searcher is not None:
            return self.completed
        return bool(self.runs) and all(use.ended for use in self.runs.values())

    def gpu_seconds_at(self, now: datetime) -> float:
        """GPU-seconds held by the experiment's runs up to `now` (attempts still running count to now)."""
        running = sum(u.gpus * max(0.0, (now - u.since).total_seconds()) for u in self.runs.values() if u.since)
        return self.gpu_seconds + running

    def budget_reason(self, now: datetime) -> str | None:
        """Why the budget is spent at `now`, or None while it lasts."""
        if self.budget_spent or self.completed:
            return None
        search = self.manifest.search
        if search.max_time_s is not None and (now - self.created_at).total_seconds() >= search.max_time_s:
            return f"time budget of {_duration(search.max_time_s)} spent"
        if search.max_gpu_hours is not None and self.gpu_seconds_at(now) >= search.max_gpu_hours * 3600.0:
            return f"GPU-hour budget of {search.max_gpu_hours:g} spent"
        return None

    def better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best[0] if self.manifest.search.goal == "maximize" else value < self.best[0]


class Searches:
    """Every followed experiment, fed from the log in position order."""

    def __init__(self) -> None:
        self._experiments: dict[str, ExperimentSearch] = {}
        #: A resumed attempt's points that an earlier attempt reported are no new input (metric_repeats).
        self._repeats = RepeatFilter()

    def __contains__(self, experiment_id: object) -> bool:
        return experiment_id in self._experiments

    def get(self, experiment_id: str) -> ExperimentSearch | None:
        return self._experiments.get(experiment_id)

    def live_ids(self) -> list[str]:
        """The experiments whose events still matter (the others are finished)."""
        return [e for e, search in self._experiments.items() if not search.finished]

    def follows(self, correlation_id: str | None) -> bool:
        """Cheap pre-check before decoding: only events of followed experiments (or new ones) matter."""
        return correlation_id is not None and correlation_id in self._experiments

    def feed(self, stream_id: str, correlation_id: str | None, msg: Message, recorded_at: datetime) -> list[Numbered]:
        """One logged event; the decisions it leads to, numbered.

        A searcher that raises ends its own experiment (Complete, with the
        error as the reason) instead of failing the driver on every pass:
        the same inputs raise the same error on replay, so this decision too
        is a function of the log, and the other experiments go on.
        """
        if isinstance(msg, events_pb2.ExperimentCreated):
            try:
                return self._created(msg, recorded_at)
            except Exception as exc:
                created = self._experiments.get(msg.experiment_id)
                return [] if created is None else _failed(created, exc)
        experiment_id = correlation_id or ""
        search = self._experiments.get(experiment_id)
        if search is None or search.failed:
            return []
        try:
            return self._dispatch(search, stream_id, msg, recorded_at)
        except Exception as exc:
            return _failed(search, exc)

    def _dispatch(
        self, search: ExperimentSearch, stream_id: str, msg: Message, recorded_at: datetime
    ) -> list[Numbered]:
        kind, _, ident = stream_id.partition(":")
        if kind == "experiment":
            return self._experiment_event(search, msg)
        if kind == "run-metrics" and isinstance(msg, events_pb2.RunMetricsReported):
            points = self._repeats.kept(ident, msg.attempt, msg.points, ((p.name, p.step) for p in msg.points))
            if len(points) == len(msg.points):
                return self._metrics(search, msg)
            kept = events_pb2.RunMetricsReported()
            kept.CopyFrom(msg)
            del kept.points[:]
            kept.points.extend(points)
            return self._metrics(search, kept)
        if kind == "run":
            return self._run_event(search, ident, msg, recorded_at)
        return []

    def budgets_spent(self, now: datetime) -> list[tuple[str, str]]:
        """(experiment id, reason) for every experiment whose budget ran out by `now` (not yet recorded)."""
        spent = []
        for search in self._experiments.values():
            if search.finished:
                continue
            reason = search.budget_reason(now)
            if reason is not None:
                spent.append((search.experiment_id, reason))
        return spent

    # -- inputs -------------------------------------------------------------------

    def _created(self, msg: events_pb2.ExperimentCreated, at: datetime) -> list[Numbered]:
        facts = msg.facts  # decided at submit (or upcast from an older event's manifest by `decode`)
        manifest = manifest_of(msg.name, facts)
        if manifest is None:
            return []  # stored before a stricter parser: such an experiment was never searched
        search_ = manifest.search
        searched = facts.searched
        if not searched and search_.max_time_s is None and search_.max_gpu_hours is None:
            return []
        searcher = searcher_for(manifest, msg.experiment_id) if searched else None
        search = ExperimentSearch(msg.experiment_id, manifest, at, searcher)
        for run_id in msg.run_ids:
            search.runs[run_id] = _RunUse()
        self._experiments[msg.experiment_id] = search
        return search.number(searcher.start()) if searcher is not None else []

    def _experiment_event(self, search: ExperimentSearch, msg: Message) -> list[Numbered]:
        if isinstance(msg, events_pb2.ExperimentRunAdded):
            search.runs.setdefault(msg.run_id, _RunUse())
            return []
        if isinstance(msg, events_pb2.ExperimentCancelRequested):
            if search.searcher is None:
                return []
            return search.number(search.searcher.on_close("canceled"))
        if isinstance(msg, events_pb2.ExperimentBudgetSpent):
            if search.budget_spent:
                return []
            search.budget_spent = True
            actions: list[Action] = []
            if search.searcher is not None:
                actions.extend(search.searcher.on_close(msg.reason))
            stopped = {a.run_id for a in actions if isinstance(a, StopRun)}
            for run_id, use in search.runs.items():
                if not use.ended and run_id not in stopped:
                    actions.append(StopRun(run_id=run_id, reason=BUDGET_STOP, rung=0, level=0, value=0.0))
            return search.number(actions)
        return []

    def _metrics(self, search: ExperimentSearch, msg: events_pb2.RunMetricsReported) -> list[Numbered]:
        metric = search.metric
        if metric is None:
            return []
        actions: list[Action] = []
        improved = False
        for point in msg.points:
            if point.name != metric or not math.isfinite(point.value):
                continue
            if search.manifest.search.goal is not None and search.better(point.value):
                search.best = (point.value, msg.run_id, point.step)
                improved = True
            if search.searcher is not None:
                actions.extend(search.searcher.on_metric(msg.run_id, point.step, point.value))
        if improved and search.best is not None:
            # One new best per batch (a batch may hold thousands of points), before the rung decisions.
            value, run_id, step = search.best
            actions.insert(0, NewBest(run_id=run_id, step=step, value=value))
        return search.number(actions)

    def _run_event(self, search: ExperimentSearch, run_id: str, msg: Message, at: datetime) -> list[Numbered]:
        use = search.runs.setdefault(run_id, _RunUse())
        if isinstance(msg, events_pb2.RunAssigned):
            use.gpus, use.since = len(msg.gpu_ids), at
            return []
        if isinstance(msg, events_pb2.RunResumed):
            # A paused run back in the queue (its GPU time starts again at its next RunAssigned).
            return [] if search.searcher is None else search.number(search.searcher.on_run_resumed(run_id, msg.rung))
        outcome = _ENDINGS.get(type(msg))
        if outcome is None and not isinstance(msg, events_pb2.RunRequeued | events_pb2.RunPaused):
            return []
        if use.since is not None:
            search.gpu_seconds += use.gpus * max(0.0, (at - use.since).total_seconds())
            use.since = None
        if isinstance(msg, events_pb2.RunPaused):  # held: alive, but its GPU time stopped
            return [] if search.searcher is None else search.number(search.searcher.on_run_paused(run_id))
        if outcome is None:  # re-queued: the run is alive (not ended), only its GPU time stopped
            return []
        use.ended = True
        if search.searcher is None:
            return []
        return search.number(search.searcher.on_run_ended(run_id, outcome))


def _failed(search: ExperimentSearch, exc: Exception) -> list[Numbered]:
    """Complete the experiment whose searcher raised `exc`; decisions it had made before stay recorded."""
    search.failed = True
    reason = f"the searcher failed: {exc}".replace("\x00", "\\0")[:500]
    return search.number([Complete(reason=reason)])


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
