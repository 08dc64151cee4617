"""ASHA with promotions (`search.asha.mode: pause`): pause at rungs, resume the top 1/eta, stop the rest at the end.

The worked example checks the decisions by hand; the property tests drive the
searcher through any interleaving a cluster can produce (runs reporting in any
order, jumping rungs, failing, pauses confirmed late, closes) and check the
paper's rules against an independent bookkeeping of the decision log.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runyard.server.domain.manifest import parse_manifest
from runyard.server.domain.manifest_model import Goal
from runyard.server.domain.searchers import (
    AshaConfig,
    AshaPauseSearcher,
    AshaSearcher,
    Closed,
    Complete,
    CreateTrial,
    Decision,
    MetricReported,
    Paused,
    PauseRun,
    Promote,
    Resumed,
    ResumeRun,
    RunEnded,
    RunOutcome,
    SearcherInput,
    Started,
    StopRun,
    feed,
    replay,
    searcher_for,
)
from runyard.server.domain.searchers.asha import NOT_PROMOTED


def name(index: int) -> str:
    return f"run-{index}"


def pausing(
    n: int, eta: int = 3, max_resource: int = 9, max_parallel: int | None = 2, goal: Goal = "maximize"
) -> AshaPauseSearcher:
    config = AshaConfig(min_resource=1, reduction_factor=eta, max_resource=max_resource, mode="pause")
    return AshaPauseSearcher([{"i": i} for i in range(n)], goal, config, max_parallel, name)


def test_runs_pause_at_rungs_and_the_top_third_resumes_from_where_it_stopped() -> None:
    """Worked by hand: eta 3, rungs at 1 and 3 epochs, max_resource 9, two GPUs, four configurations."""
    s = pausing(4)
    assert s.start() == [CreateTrial(0, name(0), {"i": 0}), CreateTrial(1, name(1), {"i": 1})]
    # Rung 0 holds 1 result: top 1 // 3 = 0, nothing promotable: pause, the slot takes a new trial.
    assert s.on_metric(name(0), 1, 0.5) == [PauseRun(name(0), 0, 1, 0.5), CreateTrial(2, name(2), {"i": 2})]
    assert s.on_metric(name(1), 1, 0.7) == [PauseRun(name(1), 0, 1, 0.7), CreateTrial(3, name(3), {"i": 3})]
    # A run still stopping is not resumed (its resume would be refused): run-2's slot waits for nothing.
    assert s.on_metric(name(2), 1, 0.6) == [PauseRun(name(2), 0, 1, 0.6)]
    # Rung 0 now holds 3 results: run-1 (0.7) is the top third. Its RunPaused read: it resumes for rung 1.
    assert s.on_run_paused(name(0)) == []
    assert s.on_run_paused(name(1)) == [ResumeRun(name(1), 1, 3, 0.7)]
    assert s.on_run_paused(name(2)) == []
    # Points from a paused run, and below its next rung, decide nothing.
    assert s.on_metric(name(0), 2, 0.9) == []
    assert s.on_metric(name(1), 2, 0.8) == []
    # run-3 arrives fourth at rung 0 with the best value: top 1 is run-3 itself, so it simply trains on.
    assert s.on_metric(name(3), 1, 0.9) == [Promote(name(3), 0, 1, 0.9)]
    # run-1 reaches rung 1 (level 3): alone there, it pauses; rung 0's top 1 (run-3) is already promoted,
    # no trial is left: its slot stays free.
    assert s.on_metric(name(1), 3, 0.75) == [PauseRun(name(1), 1, 3, 0.75)]
    assert s.on_run_paused(name(1)) == []
    assert s.on_metric(name(3), 3, 0.95) == [PauseRun(name(3), 1, 3, 0.95)]
    # Nothing trains, nothing is stopping, nothing is promotable: the paused runs never promoted are stopped.
    assert s.on_run_paused(name(3)) == [
        StopRun(name(0), NOT_PROMOTED, 0, 1, 0.5),
        StopRun(name(2), NOT_PROMOTED, 0, 1, 0.6),
        StopRun(name(1), NOT_PROMOTED, 1, 3, 0.75),
        StopRun(name(3), NOT_PROMOTED, 1, 3, 0.95),
        Complete("every trial ended"),
    ]


def test_a_promoted_run_climbs_rung_by_rung_and_past_the_last_rung_trains_to_max_resource() -> None:
    s = pausing(8, eta=2, max_resource=8, max_parallel=1)  # rungs at 1, 2 and 4 epochs
    s.start()
    assert s.on_metric(name(0), 1, 0.9) == [PauseRun(name(0), 0, 1, 0.9), CreateTrial(1, name(1), {"i": 1})]
    s.on_run_paused(name(0))
    # Rung 0: 2 results, the top half is run-0, paused: it is the job of run-1's slot.
    assert s.on_metric(name(1), 1, 0.1) == [PauseRun(name(1), 0, 1, 0.1), ResumeRun(name(0), 1, 2, 0.9)]
    s.on_run_paused(name(1))
    assert s.on_metric(name(0), 2, 0.5) == [PauseRun(name(0), 1, 2, 0.5), CreateTrial(2, name(2), {"i": 2})]
    s.on_run_paused(name(0))
    assert s.on_metric(name(2), 1, 0.8) == [PauseRun(name(2), 0, 1, 0.8), CreateTrial(3, name(3), {"i": 3})]
    s.on_run_paused(name(2))
    # Rung 0: 4 results, top 2 = run-0 (promoted already) and run-2: run-2 resumes.
    assert s.on_metric(name(3), 1, 0.2) == [PauseRun(name(3), 0, 1, 0.2), ResumeRun(name(2), 1, 2, 0.8)]
    s.on_run_paused(name(3))
    # Rung 1: run-2 beats run-0: its own slot's job, it trains on.
    assert s.on_metric(name(2), 2, 0.6) == [Promote(name(2), 1, 2, 0.6)]
    assert s.on_metric(name(2), 4, 0.95) == [PauseRun(name(2), 2, 4, 0.95), CreateTrial(4, name(4), {"i": 4})]
    s.on_run_paused(name(2))
    # A point that jumps to rung 2 is recorded there only; run-2 is that rung's top half and the highest
    # promotable: promoted past the last rung, it resumes to train to max_resource (8 epochs).
    assert s.on_metric(name(4), 5, 0.5) == [PauseRun(name(4), 2, 4, 0.5), ResumeRun(name(2), 3, 8, 0.95)]
    assert s.snapshot().rungs[1] == ((name(0), 0.5), (name(2), 0.6))
    assert s.on_metric(name(2), 8, 0.97) == []  # no rung at max_resource: the run completes by itself


def test_minimize_promotes_the_lowest_value() -> None:
    s = pausing(3, eta=2, max_parallel=1, goal="minimize")
    s.start()
    s.on_metric(name(0), 1, 0.5)
    s.on_run_paused(name(0))
    assert s.on_metric(name(1), 1, 0.7) == [PauseRun(name(1), 0, 1, 0.7), ResumeRun(name(0), 1, 2, 0.5)]


def test_a_close_stops_the_paused_and_pausing_runs_and_promotes_nothing_more() -> None:
    s = pausing(6, max_parallel=3)
    s.start()
    s.on_metric(name(0), 1, 0.5)
    s.on_run_paused(name(0))
    s.on_metric(name(1), 1, 0.4)
    assert s.on_close("budget") == [
        StopRun(name(1), "budget", 0, 1, 0.4),
        StopRun(name(0), "budget", 0, 1, 0.5),
    ]
    assert s.on_metric(name(2), 1, 0.9) == []
    assert s.on_run_ended(name(2), RunOutcome.STOPPED_EARLY) == []
    assert s.on_run_ended(name(3), RunOutcome.STOPPED_EARLY) == []
    assert s.on_run_ended(name(4), RunOutcome.STOPPED_EARLY) == [Complete("budget")]


def test_an_owner_pause_keeps_the_slot_and_an_owner_resume_of_a_rung_pause_takes_one() -> None:
    s = pausing(4, max_parallel=1)
    s.start()
    assert s.on_run_paused(name(0)) == []  # the experiment's owner paused it: still alive, no new trial
    assert s.on_run_resumed(name(0), 0) == []
    s.on_metric(name(0), 1, 0.5)
    s.on_run_paused(name(0))  # paused by ASHA, at rung 0
    assert s.on_run_resumed(name(0), 0) == []  # the owner resumed it: it trains again, in a slot
    assert s.snapshot().pool.active == (name(1), name(0))
    assert s.snapshot().paused == ()


def test_pause_mode_needs_max_resource() -> None:
    with pytest.raises(ValueError, match="max_resource"):
        AshaConfig(1, 3, None, mode="pause")


def test_the_manifest_picks_the_variant_and_stop_only_stays_the_default() -> None:
    base = (
        "name: e\ncommand: python t.py --lr ${lr}\nresults: s3://results/e\nhyperparameters: {lr: [0.1, 0.01]}\n"
        "search: {method: grid, metric: acc, goal: maximize, early_stopping: asha, max_parallel: 1"
    )
    assert isinstance(searcher_for(parse_manifest(base + "}\n"), "exp"), AshaSearcher)
    stop = parse_manifest(base + ", asha: {max_resource: 9, mode: stop}}\n")
    assert isinstance(searcher_for(stop, "exp"), AshaSearcher)
    paused = searcher_for(parse_manifest(base + ", asha: {max_resource: 9, mode: pause}}\n"), "exp")
    assert isinstance(paused, AshaPauseSearcher)
    assert paused.levels == [1, 3]


# -- properties over any interleaving ------------------------------------------------------------


@dataclass
class Ledger:
    """An independent account of the decision log: who trains, who waits paused, what each rung recorded."""

    eta: int
    maximize: bool
    max_parallel: int | None
    rungs: dict[int, list[tuple[str, float]]] = field(default_factory=dict)
    training: set[str] = field(default_factory=set)
    pausing: dict[str, int] = field(default_factory=dict)
    paused: dict[str, int] = field(default_factory=dict)
    promoted: dict[int, list[str]] = field(default_factory=dict)
    ever_paused: set[str] = field(default_factory=set)
    resumed: set[str] = field(default_factory=set)
    stopped: set[str] = field(default_factory=set)
    ended: set[str] = field(default_factory=set)
    complete: bool = False
    closed: bool = False

    def top(self, rung: int) -> list[str]:
        results = self.rungs.get(rung, [])
        order = sorted(range(len(results)), key=lambda i: (-results[i][1] if self.maximize else results[i][1], i))
        return [results[i][0] for i in order[: len(results) // self.eta]]

    def promotable(self, rung: int, arriving: str | None = None) -> list[str]:
        done = self.promoted.get(rung, [])
        return [r for r in self.top(rung) if r not in done and (self.paused.get(r) == rung or r == arriving)]

    def take_input(self, item: SearcherInput) -> None:
        if isinstance(item, Paused) and item.run_id in self.pausing:
            self.paused[item.run_id] = self.pausing.pop(item.run_id)
        if isinstance(item, RunEnded):
            self.ended.add(item.run_id)
            self.training.discard(item.run_id)
            self.pausing.pop(item.run_id, None)
            self.paused.pop(item.run_id, None)
        if isinstance(item, Closed):
            self.closed = True

    def take(self, d: Decision) -> None:
        assert not self.complete, f"{d} after Complete"
        if isinstance(d, CreateTrial):
            self.training.add(d.run_id)
        elif isinstance(d, Promote | PauseRun):
            assert d.run_id in self.training
            self.rungs.setdefault(d.rung, []).append((d.run_id, d.value))
            if isinstance(d, Promote):
                assert d.run_id in self.top(d.rung), "a promotion is in the top 1/eta of its rung"
                higher = [k for k in self.rungs if k > d.rung and self.promotable(k)]
                assert not higher, "a promotable run of a higher rung goes first"
                assert self.promotable(d.rung, arriving=d.run_id)[0] == d.run_id, "the best promotable goes first"
                self.promoted.setdefault(d.rung, []).append(d.run_id)
            else:
                higher = [k for k in self.rungs if k > d.rung and self.promotable(k)]
                own = self.promotable(d.rung, arriving=d.run_id)
                assert higher or own[:1] != [d.run_id], "a run that is its own slot's best job trains on"
                self.training.discard(d.run_id)
                self.pausing[d.run_id] = d.rung
                self.ever_paused.add(d.run_id)
        elif isinstance(d, ResumeRun):
            rung = d.rung - 1
            assert self.paused.get(d.run_id) == rung, "only a run whose pause was read is resumed"
            assert d.run_id in self.top(rung), "a promotion is in the top 1/eta of its rung"
            assert not [k for k in self.rungs if k > rung and self.promotable(k)], "the highest rung goes first"
            assert self.promotable(rung)[0] == d.run_id, "the best promotable run of the rung goes first"
            self.promoted.setdefault(rung, []).append(d.run_id)
            del self.paused[d.run_id]
            self.resumed.add(d.run_id)
            self.training.add(d.run_id)
        elif isinstance(d, StopRun):
            self.stopped.add(d.run_id)
            self.training.discard(d.run_id)
            self.pausing.pop(d.run_id, None)
            self.paused.pop(d.run_id, None)
        else:
            assert not self.training, "complete while runs train"
            assert not self.paused and not self.pausing, "complete while runs wait paused"
            self.complete = True
        if self.max_parallel is not None:
            assert len(self.training) <= self.max_parallel, "never more than max_parallel train at once"
        # Not "at most n // eta promoted per rung": as in the paper, a run promoted while in the top 1/eta
        # stays promoted when later arrivals push it out, so the rule holds at each promotion (checked above).


@dataclass(frozen=True)
class PauseSetup:
    n: int
    eta: int
    min_resource: int
    max_resource: int
    max_parallel: int | None
    goal: Goal

    def build(self) -> AshaPauseSearcher:
        config = AshaConfig(self.min_resource, self.eta, self.max_resource, mode="pause")
        return AshaPauseSearcher([{"i": i} for i in range(self.n)], self.goal, config, self.max_parallel, name)


@st.composite
def pause_setups(draw: st.DrawFn) -> PauseSetup:
    eta = draw(st.integers(2, 4))
    min_resource = draw(st.integers(1, 3))
    return PauseSetup(
        n=draw(st.integers(1, 30)),
        eta=eta,
        min_resource=min_resource,
        max_resource=min_resource * eta ** draw(st.integers(1, 3)) + draw(st.integers(0, 2)),
        max_parallel=draw(st.none() | st.integers(1, 5)),
        goal=draw(st.sampled_from(["maximize", "minimize"])),
    )


def cluster(setup: PauseSetup, seed: int, close_at: int | None) -> tuple[list[SearcherInput], list[list[Decision]]]:
    """A cluster the searcher drives: runs train, report (sometimes jumping rungs, sometimes a point late from a
    run that is stopping), fail now and then, and confirm pauses and stops late, in a seeded random order."""
    rng = random.Random(seed)
    searcher = setup.build()
    ledger = Ledger(setup.eta, setup.goal == "maximize", setup.max_parallel)
    inputs: list[SearcherInput] = []
    made: list[list[Decision]] = []
    epochs: dict[str, int] = {}
    training: list[str] = []
    pausing: list[str] = []
    stopping: list[str] = []

    def give(item: SearcherInput) -> None:
        inputs.append(item)
        ledger.take_input(item)
        decisions = feed(searcher, item)
        made.append(decisions)
        for d in decisions:
            ledger.take(d)
            if isinstance(d, CreateTrial):
                epochs[d.run_id] = 0
                training.append(d.run_id)
            elif isinstance(d, ResumeRun):
                training.append(d.run_id)  # from its checkpoint: its epochs go on
            elif isinstance(d, PauseRun):
                training.remove(d.run_id)
                pausing.append(d.run_id)
            elif isinstance(d, StopRun):
                for group in (training, pausing):
                    if d.run_id in group:
                        group.remove(d.run_id)
                stopping.append(d.run_id)

    give(Started())
    for step in range(2000):
        if close_at == step:
            give(Closed("budget"))
        moves = [m for m, group in (("train", training), ("pause", pausing), ("stop", stopping)) if group]
        if not moves:
            break
        move = rng.choice(moves)
        if move == "pause":
            give(Paused(pausing.pop(rng.randrange(len(pausing)))))
        elif move == "stop":
            give(RunEnded(stopping.pop(rng.randrange(len(stopping))), RunOutcome.STOPPED_EARLY))
        else:
            run_id = rng.choice(training)
            if rng.random() < 0.02:
                training.remove(run_id)
                give(RunEnded(run_id, RunOutcome.FAILED))
                continue
            epochs[run_id] += rng.choice((1, 1, 1, 2, 5))
            value = rng.choice((0.1, 0.5, 0.9)) if rng.random() < 0.2 else rng.random()
            give(MetricReported(run_id, epochs[run_id], value))
            if rng.random() < 0.05 and pausing:
                give(MetricReported(rng.choice(pausing), 99, 1.0))  # late point of a run that is stopping
            if run_id in training and epochs[run_id] >= setup.max_resource:
                training.remove(run_id)
                give(RunEnded(run_id, RunOutcome.COMPLETED))
    assert ledger.complete, "the search completes once its runs stop moving"
    assert ledger.ever_paused <= ledger.resumed | ledger.stopped | ledger.ended, (
        "every paused run is promoted or stopped by the end"
    )
    assert ledger.max_parallel is None or len(ledger.training) <= ledger.max_parallel
    return inputs, made


@settings(max_examples=150, deadline=None)
@given(pause_setups(), st.integers(0, 2**32), st.none() | st.integers(0, 300))
def test_pause_asha_keeps_its_rules_in_any_interleaving(setup: PauseSetup, seed: int, close_at: int | None) -> None:
    cluster(setup, seed, close_at)


@settings(max_examples=100, deadline=None)
@given(pause_setups(), st.integers(0, 2**32), st.none() | st.integers(0, 300), st.data())
def test_replaying_the_log_anywhere_rebuilds_the_same_state_and_decisions(
    setup: PauseSetup, seed: int, close_at: int | None, data: st.DataObject
) -> None:
    inputs, made = cluster(setup, seed, close_at)
    cut = data.draw(st.integers(0, len(inputs)), label="restart after this many inputs")
    uninterrupted = setup.build()
    replay(uninterrupted, inputs)
    restarted = setup.build()
    assert replay(restarted, inputs[:cut]) == [d for batch in made[:cut] for d in batch]
    assert [feed(restarted, item) for item in inputs[cut:]] == made[cut:]
    assert restarted.snapshot() == uninterrupted.snapshot()


def test_an_owner_resume_input_is_replayed_too() -> None:
    inputs: list[SearcherInput] = [
        Started(),
        MetricReported(name(0), 1, 0.5),
        Paused(name(0)),
        Resumed(name(0), 0),
        MetricReported(name(1), 1, 0.6),
    ]
    a, b = pausing(5, max_parallel=1), pausing(5, max_parallel=1)
    assert replay(a, inputs) == replay(b, inputs)
    assert a.snapshot() == b.snapshot()
