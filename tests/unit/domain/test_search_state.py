"""Experiments as the experiment driver sees them: logged events in, numbered decisions out.

A small simulated cluster plays driver and agents over one log: every decision
becomes the events the driver records (a trial is ExperimentRunAdded +
RunCreated, a stop RunStopRequested, ...), agents assign, train (their metric
curves are known functions of the epoch) and end runs, and `Searches` is fed
the log in order, as the driver feeds it. The decisions must be exactly those
of a bare ASHA searcher (and of the independent oracle) fed the same inputs,
must be a function of the log alone, and budgets must be counted as billing
counts GPU time.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runyard.server.domain import events as ev
from runyard.server.domain.command_template import format_value
from runyard.server.domain.experiment import Experiment, new_run
from runyard.server.domain.ids import run_id_for
from runyard.server.domain.manifest import expand_trials, parse_manifest
from runyard.server.domain.manifest_model import Manifest
from runyard.server.domain.run import Run
from runyard.server.domain.search_state import BUDGET_STOP, INPUT_TYPES, NewBest, Numbered, Searches
from runyard.server.domain.searchers import (
    AshaConfig,
    AshaSearcher,
    Closed,
    Complete,
    CreateTrial,
    Decision,
    MetricReported,
    Promote,
    RunEnded,
    RunOutcome,
    SearcherInput,
    Started,
    StopRun,
    feed,
    searcher_for,
)
from runyard.v1 import common_pb2, events_pb2
from tests.unit.domain.searchers.oracle import expected_decisions
from tests.unit.domain.searchers.scenarios import quality

EXP = "exp-asha"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
GPUS = ["0", "1"]

ASHA_YAML = """
name: asha-search
command: python train.py --lr ${lr} --width ${width}
resources: {gpus: 2}
results: file:///srv/results/asha
hyperparameters:
  lr: {type: log, min: 1.0e-5, max: 1.0}
  width: {type: categorical, values: [16, 32, 64, 128, 256]}
search:
  method: random
  seed: %(seed)d
  max_runs: %(runs)d
  max_parallel: 4
  metric: val_accuracy
  goal: maximize
  early_stopping: asha
  asha: {min_resource: 2, reduction_factor: 2, max_resource: 16, time_unit: epochs}
metrics: {patterns: ['val_acc=(?P<val_accuracy>[0-9.]+)']}
max_restarts: 1
"""
#: The ladder ASHA_YAML asks for (not the default 1, 3, 9, ...): rungs at 2, 4 and 8 epochs.
LADDER = AshaConfig(min_resource=2, reduction_factor=2, max_resource=16, time_unit="epochs")
MAX_EPOCHS = 16


def asha_yaml(seed: int = 11, runs: int = 14) -> str:
    return ASHA_YAML % {"seed": seed, "runs": runs}


@dataclass(frozen=True)
class Entry:
    """A logged event as the driver reads it."""

    stream_id: str
    correlation_id: str | None
    msg: Message
    recorded_at: datetime


def feed_all(searches: Searches, entries: Iterable[Entry]) -> list[Numbered]:
    """Feed what the driver would (only INPUT_TYPES), in order; every decision made."""
    out: list[Numbered] = []
    for e in entries:
        if isinstance(e.msg, INPUT_TYPES):
            out.extend(searches.feed(e.stream_id, e.correlation_id, e.msg, e.recorded_at))
    return out


# -- the simulated cluster ----------------------------------------------------------------


def tau(index: int) -> float:
    """Per-run time constants, so learning curves cross as real ones do."""
    return 1.5 + (index * 7 % 5) * 1.5


@dataclass
class Cluster:
    """The driver and the agents of one experiment, writing one log.

    `rng` (None: a fixed, orderly schedule) shuffles which run reports first
    each minute, lets the driver fall behind the log, lets a stopping run
    report once more before its agent stops it, and loses agents now and then.
    """

    experiment_id: str
    manifest_yaml: str
    rng: random.Random | None = None
    searches: Searches = field(default_factory=Searches)
    log: list[Entry] = field(default_factory=list)
    decisions: list[Numbered] = field(default_factory=list)
    runs: dict[str, Run] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)
    now: datetime = T0
    fed: int = 0
    pumping: bool = False

    def __post_init__(self) -> None:
        self.manifest: Manifest = parse_manifest(self.manifest_yaml)
        self.trials = expand_trials(self.manifest)
        opened, runs = Experiment.create(
            self.experiment_id, "acct-1", self.manifest, self.manifest_yaml, "s3://code/c.tgz", "req-1"
        )
        assert runs == [], "a searched experiment is created without runs"
        self.append(ev.experiment_stream(self.experiment_id), opened)

    # -- the log and the driver

    def append(self, stream_id: str, msg: Message) -> None:
        self.log.append(Entry(stream_id, self.experiment_id, msg, self.now))
        if self.rng is None or self.rng.random() < 0.6:
            self.pump()

    def pump(self) -> None:
        """The driver reads the log up to its end, recording each decision as it comes."""
        if self.pumping:
            return  # what it records now it reads after the decisions it is recording
        self.pumping = True
        try:
            self._pump()
        finally:
            self.pumping = False

    def _pump(self) -> None:
        while self.fed < len(self.log):
            entry = self.log[self.fed]
            self.fed += 1
            for numbered in feed_all(self.searches, [entry]):
                self.decisions.append(numbered)
                self.record(numbered.action)

    def record(self, action: Decision | NewBest) -> None:
        experiment_stream = ev.experiment_stream(self.experiment_id)
        if isinstance(action, CreateTrial):
            created = new_run(
                self.experiment_id, "acct-1", self.manifest, "s3://code/c.tgz", action.index, action.hyperparameters
            )
            assert created.run_id == action.run_id, "the searcher names the run the log will hold"
            shown = {k: format_value(v) for k, v in action.hyperparameters.items()}
            self.runs[created.run_id] = Run.replay([created])
            self.append(
                experiment_stream,
                events_pb2.ExperimentRunAdded(run_id=created.run_id, index=action.index, hyperparameters=shown),
            )
            self.append(ev.run_stream(created.run_id), created)
        elif isinstance(action, StopRun):
            self.command(
                action.run_id, lambda r: r.request_stop(action.reason, action.rung, action.level, action.value)
            )
        elif isinstance(action, Promote):
            promoted = events_pb2.RunPromoted(
                run_id=action.run_id, rung=action.rung, level=action.level, value=action.value
            )
            self.append(experiment_stream, promoted)
        elif isinstance(action, NewBest):
            best = events_pb2.ExperimentBestFound(run_id=action.run_id, step=action.step, value=action.value)
            self.append(experiment_stream, best)
        elif isinstance(action, Complete):
            self.append(experiment_stream, events_pb2.ExperimentCompleted(reason=action.reason))

    def command(self, run_id: str, decide: Callable[[Run], list[Message]]) -> None:
        run = self.runs[run_id]
        for event in decide(run):
            run.apply(event)
            self.append(ev.run_stream(run_id), event)

    # -- the agents

    def curve(self, run_id: str, epoch: int) -> float:
        index = self.runs[run_id].index
        return quality(self.trials[index]) * (1.0 - math.exp(-epoch / tau(index)))

    def report_metrics(self, run_id: str) -> None:
        """One batch: a few epochs' validation accuracy, and a training loss the searcher must ignore."""
        run = self.runs[run_id]
        first = self.epochs[run_id] + 1
        last = min(MAX_EPOCHS, first + run.index % 3)
        self.epochs[run_id] = last
        points = []
        for epoch in range(first, last + 1):
            points.append(common_pb2.MetricPoint(name="train_loss", step=epoch, value=1.0 / epoch))
            if epoch == first and run.index % 4 == 1:
                points.append(common_pb2.MetricPoint(name="val_accuracy", step=epoch, value=float("nan")))
            points.append(common_pb2.MetricPoint(name="val_accuracy", step=epoch, value=self.curve(run_id, epoch)))
        batch = events_pb2.RunMetricsReported(run_id=run_id, attempt=run.attempt, points=points)
        self.append(ev.run_metrics_stream(run_id), batch)

    def minute(self) -> None:
        self.now += timedelta(minutes=1)
        order = list(self.runs)
        if self.rng is not None:
            self.rng.shuffle(order)
        for run_id in order:
            run = self.runs[run_id]
            if run.is_terminal:
                continue
            if run.state == common_pb2.RUN_STATE_QUEUED:
                self.epochs[run_id] = 0
                self.command(run_id, lambda r: r.assign("agent-1", GPUS))
                self.command(run_id, lambda r: r.report_staging(r.attempt))
                self.command(run_id, lambda r: r.report_started(r.attempt))
            elif run.stop_requested:
                if self.rng is not None and self.rng.random() < 0.5 and self.epochs[run_id] < MAX_EPOCHS:
                    self.report_metrics(run_id)  # the agent had not seen the stop yet
                self.command(run_id, lambda r: r.report_canceled(r.attempt, "stopped"))
            elif self.rng is not None and self.rng.random() < 0.02:
                self.command(run_id, lambda r: r.agent_lost("agent-1"))
            else:
                self.report_metrics(run_id)
                if self.epochs[run_id] >= MAX_EPOCHS:
                    self.command(run_id, lambda r: r.report_uploading(r.attempt, 0))
                    self.command(run_id, lambda r: r.report_completed(r.attempt, ""))

    def run_to_the_end(self) -> None:
        """Until the search completed and every run ended (a run ASHA stopped last may still be stopping)."""
        for _ in range(400):
            self.minute()
            self.pump()
            if any(isinstance(n.action, Complete) for n in self.decisions) and all(
                run.is_terminal for run in self.runs.values()
            ):
                return
        raise AssertionError("the experiment never completed")


def searcher_inputs(entry: Entry, metric: str) -> list[SearcherInput]:
    """What an input event tells a searcher, independently of `Searches`."""
    msg = entry.msg
    run_id = entry.stream_id.partition(":")[2]
    if isinstance(msg, events_pb2.ExperimentCreated):
        return [Started()]
    if isinstance(msg, events_pb2.RunMetricsReported):
        return [
            MetricReported(msg.run_id, p.step, p.value)
            for p in msg.points
            if p.name == metric and math.isfinite(p.value)
        ]
    endings = {
        events_pb2.RunCompleted: RunOutcome.COMPLETED,
        events_pb2.RunFailed: RunOutcome.FAILED,
        events_pb2.RunCanceled: RunOutcome.CANCELED,
        events_pb2.RunStoppedEarly: RunOutcome.STOPPED_EARLY,
    }
    if type(msg) in endings:
        return [RunEnded(run_id, endings[type(msg)])]
    if isinstance(msg, events_pb2.ExperimentCancelRequested):
        return [Closed("canceled")]
    if isinstance(msg, events_pb2.ExperimentBudgetSpent):
        return [Closed(msg.reason)]
    return []


def expected_for(log: Sequence[Entry], manifest: Manifest, experiment_id: str) -> list[Numbered]:
    """The decisions a bare ASHA searcher makes over the log's inputs, each batch's new best first."""
    trials = expand_trials(manifest)
    bare = AshaSearcher(trials, "maximize", LADDER, 4, lambda i: run_id_for(experiment_id, i))
    best: float | None = None
    actions: list[Decision | NewBest] = []
    for entry in log:
        if not isinstance(entry.msg, INPUT_TYPES):
            continue
        made: list[Decision | NewBest] = []
        inputs = searcher_inputs(entry, "val_accuracy")
        for item in inputs:
            made.extend(feed(bare, item))
        improved = [i for i in inputs if isinstance(i, MetricReported) and (best is None or i.value > best)]
        if improved:
            top = max(improved, key=lambda i: i.value)  # the first of equal tops, as max() keeps
            best = top.value
            made.insert(0, NewBest(top.run_id, top.step, top.value))
        actions.extend(made)
    return [Numbered(experiment_id, n, a) for n, a in enumerate(actions)]


# -- (a) an ASHA experiment end to end ------------------------------------------------------


def test_searcher_for_takes_the_rung_ladder_from_the_manifest() -> None:
    searcher = searcher_for(parse_manifest(asha_yaml()), EXP)
    assert isinstance(searcher, AshaSearcher)
    assert searcher.config == LADDER
    assert searcher.config.levels() == [2, 4, 8]
    steps = parse_manifest(asha_yaml().replace("time_unit: epochs", "time_unit: steps"))
    stepped = searcher_for(steps, EXP)
    assert isinstance(stepped, AshaSearcher)
    assert stepped.config.time_unit == "steps"


def test_an_asha_experiment_decides_as_the_bare_searcher_does() -> None:
    cluster = Cluster(EXP, asha_yaml())
    cluster.run_to_the_end()
    decisions = cluster.decisions
    actions = [n.action for n in decisions]

    assert decisions == expected_for(cluster.log, cluster.manifest, EXP)
    assert [n.number for n in decisions] == list(range(len(decisions)))
    assert {n.experiment_id for n in decisions} == {EXP}

    # The independent oracle agrees on the searcher's part.
    inputs = [i for e in cluster.log if isinstance(e.msg, INPUT_TYPES) for i in searcher_inputs(e, "val_accuracy")]
    oracle = expected_decisions(
        cluster.trials, "maximize", 2, 2, 16, 4, lambda i: run_id_for(EXP, i), inputs, early_stopping=True
    )
    assert [a for a in actions if not isinstance(a, NewBest)] == [d for made in oracle for d in made]

    # The experiment was searched for real: every trial ran, some were cut, some trained to the end.
    created = [a for a in actions if isinstance(a, CreateTrial)]
    assert [a.index for a in created] == list(range(14))
    assert [a.hyperparameters for a in created] == cluster.trials
    stopped = {a.run_id for a in actions if isinstance(a, StopRun)}
    states = {run_id: run.state for run_id, run in cluster.runs.items()}
    assert stopped and all(states[r] == common_pb2.RUN_STATE_STOPPED_EARLY for r in stopped)
    completed = {r for r, s in states.items() if s == common_pb2.RUN_STATE_COMPLETED}
    assert completed and completed | stopped == set(states)
    assert all(a.reason == "asha" for a in actions if isinstance(a, StopRun))
    assert any(isinstance(a, Promote) for a in actions)

    # Complete once, last, when every run has ended.
    assert [a for a in actions if isinstance(a, Complete)] == [Complete("every trial ended")]
    assert isinstance(actions[-1], Complete)


def test_a_new_best_is_decided_only_on_an_improvement() -> None:
    cluster = Cluster(EXP, asha_yaml())
    cluster.run_to_the_end()
    bests = [a for a in (n.action for n in cluster.decisions) if isinstance(a, NewBest)]
    assert len(bests) >= 2
    values = [b.value for b in bests]
    assert all(later > earlier for earlier, later in itertools.pairwise(values))
    # The last new best is the best value any run ever reported.
    reported = [
        (p.value, e.msg.run_id, p.step)
        for e in cluster.log
        if isinstance(e.msg, events_pb2.RunMetricsReported)
        for p in e.msg.points
        if p.name == "val_accuracy" and math.isfinite(p.value)
    ]
    top = max(v for v, _, _ in reported)
    assert bests[-1].value == top
    assert (bests[-1].run_id, bests[-1].step) in {(r, s) for v, r, s in reported if v == top}
    # At most one per batch, however many points of it improve on the best.
    fresh = Searches()
    per_batch = [sum(isinstance(n.action, NewBest) for n in feed_all(fresh, [e])) for e in cluster.log]
    assert max(per_batch) == 1


def test_the_experiment_stream_replays_the_search() -> None:
    """What the driver recorded on the experiment stream is what the Experiment aggregate shows."""
    cluster = Cluster(EXP, asha_yaml())
    cluster.run_to_the_end()
    stream = [e.msg for e in cluster.log if e.stream_id == ev.experiment_stream(EXP)]
    experiment = Experiment.replay(stream)
    created = [a.run_id for a in (n.action for n in cluster.decisions) if isinstance(a, CreateTrial)]
    assert experiment.run_ids == tuple(created)
    assert experiment.completed == "every trial ended"
    assert experiment.budget_spent == ""
    assert experiment.version == len(stream)


# -- (b) a function of the log alone ---------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), trials_seed=st.integers(0, 50), cut=st.floats(0, 1))
def test_decisions_are_a_function_of_the_log(seed: int, trials_seed: int, cut: float) -> None:
    cluster = Cluster(EXP, asha_yaml(seed=trials_seed, runs=10), rng=random.Random(seed))
    cluster.run_to_the_end()
    log, live = cluster.log, cluster.decisions

    # A fresh driver over the whole log (a restart, another replica) re-derives every decision.
    assert feed_all(Searches(), log) == live
    # One that stopped after any prefix had made exactly the first of them, and goes on to the rest.
    k = int(cut * len(log))
    resumed = Searches()
    before = feed_all(resumed, log[:k])
    assert before == live[: len(before)]
    assert before + feed_all(resumed, log[k:]) == live
    # However the schedule went, the decisions are the bare searcher's.
    assert live == expected_for(log, cluster.manifest, EXP)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_other_experiments_in_the_log_change_nothing(data: st.DataObject) -> None:
    one = Cluster("exp-one", asha_yaml(seed=1, runs=8))
    one.run_to_the_end()
    two = Cluster("exp-two", asha_yaml(seed=2, runs=8), rng=random.Random(data.draw(st.integers(0, 1000))))
    two.run_to_the_end()
    # Any interleaving of the two logs that keeps each one's order.
    picks = data.draw(st.permutations([0] * len(one.log) + [1] * len(two.log)))
    sources = [iter(one.log), iter(two.log)]
    merged = [next(sources[p]) for p in picks]

    decided = feed_all(Searches(), merged)
    assert [n for n in decided if n.experiment_id == "exp-one"] == one.decisions
    assert [n for n in decided if n.experiment_id == "exp-two"] == two.decisions


# -- (c) budgets --------------------------------------------------------------------------------

BUDGET_YAML = """
name: budgeted
command: python train.py --lr ${lr}
resources: {gpus: 2}
results: file:///srv/results/b
hyperparameters:
  lr: {type: categorical, values: [0.1, 0.01, 0.001]}
search: {method: grid, max_gpu_hours: 1}
"""


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def created_entry(experiment_id: str, text: str, when: datetime = T0) -> tuple[Entry, list[str]]:
    opened, runs = Experiment.create(experiment_id, "acct-1", parse_manifest(text), text, "s3://c", "req")
    return Entry(ev.experiment_stream(experiment_id), experiment_id, opened, when), [r for r, _ in runs]


def run_entry(run_id: str, msg: Message, when: datetime, experiment_id: str = EXP) -> Entry:
    return Entry(ev.run_stream(run_id), experiment_id, msg, when)


def experiment_entry(msg: Message, when: datetime, experiment_id: str = EXP) -> Entry:
    return Entry(ev.experiment_stream(experiment_id), experiment_id, msg, when)


def test_gpu_hours_count_assigned_time_times_gpus_as_billing_does() -> None:
    """2 GPUs per attempt: A holds them 0-10 min, is re-queued, and holds them again from 20 min on;
    B holds them 5-15 min; C never leaves the queue. One GPU-hour is spent at 30 min."""
    opened, (a, b, c) = created_entry(EXP, BUDGET_YAML)
    searches = Searches()
    assert feed_all(searches, [opened]) == [], "a budget-only experiment has no searcher deciding"
    assert EXP in searches
    search = searches.get(EXP)
    assert search is not None

    feed_all(
        searches,
        [
            run_entry(a, events_pb2.RunAssigned(attempt=1, agent_id="agent-1", gpu_ids=GPUS), at(0)),
            run_entry(b, events_pb2.RunAssigned(attempt=1, agent_id="agent-2", gpu_ids=["2", "3"]), at(5)),
        ],
    )
    assert search.gpu_seconds_at(at(8)) == 2 * 8 * 60 + 2 * 3 * 60
    feed_all(
        searches, [run_entry(a, events_pb2.RunRequeued(attempt=1, reason=common_pb2.FAILURE_REASON_AGENT_LOST), at(10))]
    )
    assert search.gpu_seconds_at(at(12)) == 2 * 600 + 2 * 7 * 60, "a re-queued attempt stops counting"
    feed_all(searches, [run_entry(b, events_pb2.RunCompleted(attempt=1), at(15))])
    assert search.gpu_seconds_at(at(18)) == 2400, "nothing holds GPUs while A waits in the queue"
    feed_all(searches, [run_entry(a, events_pb2.RunAssigned(attempt=2, agent_id="agent-1", gpu_ids=GPUS), at(20))])
    assert search.gpu_seconds_at(at(25)) == 2400 + 2 * 300, "the running attempt counts up to now"

    assert searches.budgets_spent(at(30) - timedelta(microseconds=1)) == []
    assert searches.budgets_spent(at(30)) == [(EXP, "GPU-hour budget of 1 spent")]
    assert searches.budgets_spent(at(90)) == [(EXP, "GPU-hour budget of 1 spent")], "listed until recorded"

    # Once the driver's ExperimentBudgetSpent is read back: every unfinished run is stopped, once.
    spent = experiment_entry(events_pb2.ExperimentBudgetSpent(reason="GPU-hour budget of 1 spent"), at(30))
    assert feed_all(searches, [spent]) == [
        Numbered(EXP, 0, StopRun(a, BUDGET_STOP, 0, 0, 0.0)),
        Numbered(EXP, 1, StopRun(c, BUDGET_STOP, 0, 0, 0.0)),
    ]
    assert searches.budgets_spent(at(600)) == []
    assert feed_all(searches, [spent]) == [], "a budget is spent once"

    # A's attempt ends when its agent has stopped it; its GPU time is counted to then.
    feed_all(searches, [run_entry(a, events_pb2.RunStoppedEarly(attempt=2, reason="budget"), at(31))])
    assert search.gpu_seconds_at(at(600)) == 2400 + 2 * 660


def test_gpu_hours_of_runs_that_end_in_every_way_are_counted_to_their_end() -> None:
    opened, (a, b, c) = created_entry(EXP, BUDGET_YAML)
    searches = Searches()
    ends = [
        events_pb2.RunFailed(attempt=1, reason=common_pb2.FAILURE_REASON_USER_CODE),
        events_pb2.RunCanceled(attempt=1),
        events_pb2.RunStoppedEarly(attempt=1),
    ]
    log = [opened]
    for i, (run_id, end) in enumerate(zip((a, b, c), ends, strict=True)):
        log.append(run_entry(run_id, events_pb2.RunAssigned(attempt=1, agent_id="x", gpu_ids=GPUS), at(i)))
        log.append(run_entry(run_id, end, at(i + 10)))
    feed_all(searches, log)
    search = searches.get(EXP)
    assert search is not None
    assert search.gpu_seconds_at(at(1000)) == 3 * 2 * 600


@pytest.mark.parametrize(
    ("max_time", "seconds", "shown"),
    [("30m", 1800, "30m"), ("90s", 90, "90s"), ("2h", 7200, "2h"), ("1d", 86400, "1d"), (5400, 5400, "90m")],
)
def test_a_time_budget_is_spent_at_created_plus_max_time_not_before(max_time: object, seconds: int, shown: str) -> None:
    text = asha_yaml().replace("max_parallel: 4", f"max_parallel: 2\n  max_time: {max_time}")
    created = at(3)
    opened, runs = created_entry(EXP, text, created)
    assert runs == []
    searches = Searches()
    first = feed_all(searches, [opened])
    assert [type(n.action) for n in first] == [CreateTrial, CreateTrial]
    assert searches.budgets_spent(created + timedelta(seconds=seconds) - timedelta(microseconds=1)) == []
    assert searches.budgets_spent(created + timedelta(seconds=seconds)) == [(EXP, f"time budget of {shown} spent")]


def test_a_spent_budget_closes_the_searcher_and_stops_its_runs() -> None:
    text = asha_yaml().replace("max_parallel: 4", "max_parallel: 2\n  max_time: 30m")
    opened, _ = created_entry(EXP, text)
    searches = Searches()
    r0, r1 = run_id_for(EXP, 0), run_id_for(EXP, 1)
    assert [n.action.run_id for n in feed_all(searches, [opened]) if isinstance(n.action, CreateTrial)] == [r0, r1]
    feed_all(
        searches,
        [
            experiment_entry(events_pb2.ExperimentRunAdded(run_id=r0, index=0), at(0)),
            experiment_entry(events_pb2.ExperimentRunAdded(run_id=r1, index=1), at(0)),
            run_entry(r0, events_pb2.RunAssigned(attempt=1, agent_id="agent-1", gpu_ids=GPUS), at(1)),
        ],
    )
    reason = "time budget of 30m spent"
    assert searches.budgets_spent(at(30)) == [(EXP, reason)]
    stops = feed_all(searches, [experiment_entry(events_pb2.ExperimentBudgetSpent(reason=reason), at(30))])
    assert stops == [
        Numbered(EXP, 2, StopRun(r0, BUDGET_STOP, 0, 0, 0.0)),
        Numbered(EXP, 3, StopRun(r1, BUDGET_STOP, 0, 0, 0.0)),
    ]
    assert searches.budgets_spent(at(600)) == []
    # A run that reports on is no reason to start another trial; the last one ending completes the search.
    metrics = events_pb2.RunMetricsReported(
        run_id=r0, attempt=1, points=[common_pb2.MetricPoint(name="val_accuracy", step=2, value=0.5)]
    )
    after = feed_all(searches, [Entry(ev.run_metrics_stream(r0), EXP, metrics, at(31))])
    assert not any(isinstance(n.action, CreateTrial) for n in after)
    assert feed_all(searches, [run_entry(r1, events_pb2.RunStoppedEarly(attempt=0, reason="budget"), at(31))]) == []
    ended = feed_all(searches, [run_entry(r0, events_pb2.RunStoppedEarly(attempt=1, reason="budget"), at(32))])
    assert [n.action for n in ended] == [Complete(reason)]


def test_a_completed_experiment_has_no_budget_left_to_spend() -> None:
    text = asha_yaml(runs=2).replace("max_parallel: 4", "max_parallel: 1\n  max_time: 1h\n  max_gpu_hours: 0.01")
    opened, _ = created_entry(EXP, text)
    searches = Searches()
    r0, r1 = run_id_for(EXP, 0), run_id_for(EXP, 1)
    decided = feed_all(searches, [opened, run_entry(r0, events_pb2.RunCompleted(attempt=1), at(1))])
    decided += feed_all(searches, [run_entry(r1, events_pb2.RunCompleted(attempt=1), at(2))])
    assert [n.action for n in decided][-1] == Complete("every trial ended")
    assert searches.budgets_spent(at(24 * 60)) == []


def test_a_cancel_closes_the_searcher_and_the_search_completes_as_canceled() -> None:
    text = asha_yaml().replace("max_parallel: 4", "max_parallel: 2")
    opened, _ = created_entry(EXP, text)
    searches = Searches()
    r0, r1 = run_id_for(EXP, 0), run_id_for(EXP, 1)
    feed_all(searches, [opened])
    assert feed_all(searches, [experiment_entry(events_pb2.ExperimentCancelRequested(reason="enough"), at(1))]) == []
    assert feed_all(searches, [run_entry(r0, events_pb2.RunCanceled(attempt=0), at(2))]) == [], "no new trial"
    assert [n.action for n in feed_all(searches, [run_entry(r1, events_pb2.RunCanceled(attempt=0), at(3))])] == [
        Complete("canceled")
    ]


# -- (d) what is not followed ----------------------------------------------------------------------

PLAIN_YAML = """
name: plain
command: python train.py --lr ${lr}
results: file:///srv/results/p
hyperparameters:
  lr: {type: categorical, values: [0.1, 0.01]}
search: {method: grid, metric: val_accuracy, goal: maximize}
"""


def test_a_plain_experiment_without_a_budget_is_not_followed() -> None:
    opened, (r0, _) = created_entry(EXP, PLAIN_YAML)
    searches = Searches()
    metrics = events_pb2.RunMetricsReported(
        run_id=r0, attempt=1, points=[common_pb2.MetricPoint(name="val_accuracy", step=1, value=0.9)]
    )
    log = [
        opened,
        run_entry(r0, events_pb2.RunAssigned(attempt=1, agent_id="a", gpu_ids=GPUS), at(1)),
        Entry(ev.run_metrics_stream(r0), EXP, metrics, at(2)),
        run_entry(r0, events_pb2.RunCompleted(attempt=1), at(3)),
    ]
    assert feed_all(searches, log) == []
    assert EXP not in searches
    assert not searches.follows(EXP)
    assert searches.budgets_spent(at(10**6)) == []


def test_a_budget_only_experiment_records_new_bests_but_never_starts_or_completes_runs() -> None:
    opened, (r0, r1) = created_entry(EXP, PLAIN_YAML.replace("goal: maximize", "goal: maximize, max_time: 1h"))
    searches = Searches()

    def batch(run_id: str, *values: float) -> Entry:
        points = [common_pb2.MetricPoint(name="val_accuracy", step=i + 1, value=v) for i, v in enumerate(values)]
        return Entry(
            ev.run_metrics_stream(run_id), EXP, events_pb2.RunMetricsReported(run_id=run_id, points=points), at(1)
        )

    decided = feed_all(
        searches,
        [
            opened,
            batch(r0, 0.5, 0.7, 0.6),
            batch(r1, 0.65),
            batch(r1, 0.7),
            batch(r1, 0.8, 0.75),
            run_entry(r0, events_pb2.RunCompleted(attempt=1), at(2)),
            run_entry(r1, events_pb2.RunCompleted(attempt=1), at(2)),
        ],
    )
    assert [n.action for n in decided] == [NewBest(r0, 2, 0.7), NewBest(r1, 1, 0.8)]
    assert searches.follows(EXP) and not searches.follows(None) and not searches.follows("exp-other")


@pytest.mark.parametrize(
    "text",
    [
        "name: [unclosed\n",
        "name: x\n",  # no command, no results
        asha_yaml().replace("method: random", "method: single"),  # asha with one run
    ],
)
def test_a_manifest_that_no_longer_parses_is_ignored(text: str) -> None:
    opened = events_pb2.ExperimentCreated(experiment_id=EXP, account_id="acct-1", name="x", manifest_yaml=text)
    searches = Searches()
    assert feed_all(searches, [Entry(ev.experiment_stream(EXP), EXP, opened, T0)]) == []
    assert EXP not in searches
    r0 = run_id_for(EXP, 0)
    assert feed_all(searches, [run_entry(r0, events_pb2.RunCompleted(attempt=1), at(1))]) == []


def test_events_of_unknown_experiments_are_ignored() -> None:
    searches = Searches()
    r0 = run_id_for(EXP, 0)
    assert searches.feed(ev.run_stream(r0), None, events_pb2.RunCompleted(attempt=1), T0) == []
    assert searches.feed(ev.run_stream(r0), EXP, events_pb2.RunCompleted(attempt=1), T0) == []


def test_a_resumed_attempts_repeated_points_are_no_new_input() -> None:
    """Attempt 2 resumed from step 1 reports steps 2 and 3 again: the first values stand (no new best at
    step 2 from the replayed 0.9); its step 4 is new."""
    opened, (r0, _) = created_entry(EXP, PLAIN_YAML.replace("goal: maximize", "goal: maximize, max_time: 1h"))

    def batch(attempt: int, *steps_values: tuple[int, float]) -> Entry:
        points = [common_pb2.MetricPoint(name="val_accuracy", step=s, value=v) for s, v in steps_values]
        msg = events_pb2.RunMetricsReported(run_id=r0, attempt=attempt, points=points)
        return Entry(ev.run_metrics_stream(r0), EXP, msg, at(1))

    decided = feed_all(
        Searches(),
        [opened, batch(1, (1, 0.5), (2, 0.7), (3, 0.6)), batch(2, (2, 0.9), (3, 0.95)), batch(2, (4, 0.8))],
    )
    assert [n.action for n in decided] == [NewBest(r0, 2, 0.7), NewBest(r0, 4, 0.8)]
