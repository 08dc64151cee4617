"""Arbitrary experiments for property tests: a searcher's configuration and any interleaving of inputs.

Inputs are drawn as abstract actions and made concrete against the run ids a
searcher really created, so a test sees metrics and ends of live runs, of runs
already stopped or ended, and of runs the experiment never had, in any order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import strategies as st

from runyard.server.domain.manifest_model import Goal
from runyard.server.domain.searchers import (
    AshaConfig,
    AshaSearcher,
    Closed,
    CreateTrial,
    MetricReported,
    RunEnded,
    RunOutcome,
    Searcher,
    SearcherInput,
    SequenceSearcher,
    Started,
    feed,
)


def name(index: int) -> str:
    return f"run-{index}"


@dataclass(frozen=True)
class Setup:
    n: int
    goal: Goal
    eta: int
    min_resource: int
    max_resource: int | None
    max_parallel: int | None
    early_stopping: bool = True

    @property
    def trials(self) -> list[dict[str, int]]:
        return [{"i": i} for i in range(self.n)]

    def build(self) -> Searcher:
        if not self.early_stopping:
            return SequenceSearcher(self.trials, self.max_parallel, name)
        config = AshaConfig(self.min_resource, self.eta, self.max_resource)
        return AshaSearcher(self.trials, self.goal, config, self.max_parallel, name)


@st.composite
def setups(draw: st.DrawFn, early_stopping: bool = True) -> Setup:
    eta = draw(st.integers(2, 4))
    min_resource = draw(st.integers(1, 3))
    max_resource = None
    if draw(st.booleans()):
        max_resource = min_resource * eta ** draw(st.integers(1, 3)) + draw(st.integers(0, 2))
    return Setup(
        n=draw(st.integers(1, 10)),
        goal=draw(st.sampled_from(["maximize", "minimize"])),
        eta=eta,
        min_resource=min_resource,
        max_resource=max_resource,
        max_parallel=draw(st.none() | st.integers(1, 4)),
        early_stopping=early_stopping,
    )


@dataclass(frozen=True)
class Metric:
    pick: int
    step: int
    value: float


@dataclass(frozen=True)
class End:
    pick: int
    outcome: RunOutcome


@dataclass(frozen=True)
class Close:
    reason: str


@dataclass(frozen=True)
class Ghost:
    """A point for a run this experiment never created."""

    value: float


Action = Metric | End | Close | Ghost

#: A few repeated values so ties at a rung are common; inf stands for a diverged metric.
VALUES = st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.8, math.inf, math.nan]) | st.floats(0, 1)

ACTIONS: st.SearchStrategy[list[Action]] = st.lists(
    st.one_of(
        st.builds(Metric, st.integers(0, 50), st.integers(0, 40), VALUES),
        st.builds(End, st.integers(0, 50), st.sampled_from(list(RunOutcome))),
        st.builds(Close, st.sampled_from(["budget", "canceled"])),
        st.builds(Ghost, st.floats(0, 1)),
    ),
    max_size=80,
)


def concrete_inputs(build: Callable[[], Searcher], actions: list[Action]) -> list[SearcherInput]:
    """The inputs the actions stand for, naming runs a searcher built by `build` really created."""
    searcher = build()
    inputs: list[SearcherInput] = [Started()]
    known = [d.run_id for d in searcher.start() if isinstance(d, CreateTrial)]
    for action in actions:
        item: SearcherInput
        if isinstance(action, Close):
            item = Closed(action.reason)
        elif isinstance(action, Ghost):
            item = MetricReported("run-ghost", 1, action.value)
        elif not known:
            continue
        elif isinstance(action, Metric):
            item = MetricReported(known[action.pick % len(known)], action.step, action.value)
        else:
            item = RunEnded(known[action.pick % len(known)], action.outcome)
        inputs.append(item)
        known += [d.run_id for d in feed(searcher, item) if isinstance(d, CreateTrial)]
    return inputs
