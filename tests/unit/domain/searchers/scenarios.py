"""Synthetic objectives for ASHA: runs whose metric curves are known functions of the step.

A run's final quality is a smooth function of its hyperparameters; its curve
rises (or its loss falls) towards it. With one shared time constant the curves
never cross, so the best configuration leads at every rung; with per-run time
constants they cross, as real learning curves do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from runyard.server.domain.manifest import expand_trials, parse_manifest
from runyard.server.domain.manifest_model import Goal, Scalar
from runyard.server.domain.searchers import (
    AshaConfig,
    AshaSearcher,
    CreateTrial,
    Decision,
    MetricReported,
    RunEnded,
    RunOutcome,
    SearcherInput,
    Started,
    StopRun,
    feed,
)


def quality(trial: Mapping[str, Scalar]) -> float:
    """Best at lr = 10**-2.5 and a wide layer; a value in (0, 1)."""
    lr, width = float(trial["lr"]), float(trial["width"])
    return 0.98 - 0.06 * (math.log10(lr) + 2.5) ** 2 - 3.0 / width


def sampled_trials(seed: int, count: int) -> list[dict[str, Scalar]]:
    manifest = parse_manifest(
        "name: synthetic\nresults: file:///tmp/r\ncommand: t ${lr} ${width}\n"
        "hyperparameters:\n  lr: {type: log, min: 1.0e-5, max: 1.0}\n"
        "  width: {type: categorical, values: [16, 32, 64, 128, 256]}\n"
        f"search: {{method: random, seed: {seed}, max_runs: {count}}}\n"
    )
    return [dict(t) for t in expand_trials(manifest)]


@dataclass(frozen=True)
class Scenario:
    label: str
    goal: Goal
    eta: int
    min_resource: int
    max_resource: int
    max_parallel: int | None
    trials: tuple[Mapping[str, Scalar], ...]
    #: Per-run time constants (curves cross) instead of one shared one.
    crossing: bool = False

    def tau(self, index: int) -> float:
        return 2.0 + (index * 7 % 5) * 2.0 if self.crossing else 4.0

    def curve(self, index: int, step: int) -> float:
        """Validation accuracy (maximize) or loss (minimize) after `step` time units."""
        q = quality(self.trials[index])
        progress = 1.0 - math.exp(-step / self.tau(index))
        return q * progress if self.goal == "maximize" else 1.0 - q * progress

    def best_index(self) -> int:
        finals = [self.curve(i, self.max_resource) for i in range(len(self.trials))]
        best = max(finals) if self.goal == "maximize" else min(finals)
        return finals.index(best)

    def searcher(self) -> AshaSearcher:
        config = AshaConfig(self.min_resource, self.eta, self.max_resource)
        return AshaSearcher(self.trials, self.goal, config, self.max_parallel, lambda i: f"run-{i}")


def scenarios() -> list[Scenario]:
    return [
        Scenario("eta3-parallel4", "maximize", 3, 1, 27, 4, tuple(sampled_trials(1, 30))),
        Scenario("eta2-min2-parallel8-loss", "minimize", 2, 2, 32, 8, tuple(sampled_trials(2, 40))),
        Scenario("eta4-sequential", "maximize", 4, 1, 64, 1, tuple(sampled_trials(3, 12))),
        Scenario("eta3-all-at-once-crossing", "maximize", 3, 1, 27, None, tuple(sampled_trials(4, 27)), True),
    ]


def drive(searcher: AshaSearcher, scenario: Scenario) -> tuple[list[SearcherInput], list[list[Decision]]]:
    """Simulate a cluster: each tick every live run trains one time unit and reports its metric.

    A stopped run leaves at once (its slot is free); the report that it ended
    arrives a tick later, as it would from an agent. Returns every input fed,
    in order, and the decisions each one produced.
    """
    inputs: list[SearcherInput] = []
    made: list[list[Decision]] = []
    steps: dict[str, int] = {}
    index_of: dict[str, int] = {}
    ending: list[str] = []

    def give(item: SearcherInput) -> None:
        decisions = feed(searcher, item)
        inputs.append(item)
        made.append(decisions)
        for d in decisions:
            if isinstance(d, CreateTrial):
                steps[d.run_id] = 0
                index_of[d.run_id] = d.index
            elif isinstance(d, StopRun):
                del steps[d.run_id]
                ending.append(d.run_id)

    give(Started())
    while steps or ending:
        for run_id in ending[:]:
            ending.remove(run_id)
            give(RunEnded(run_id, RunOutcome.STOPPED_EARLY))
        for run_id in list(steps):
            if run_id not in steps:
                continue
            steps[run_id] += 1
            step = steps[run_id]
            give(MetricReported(run_id, step, scenario.curve(index_of[run_id], step)))
            if run_id in steps and step >= scenario.max_resource:
                del steps[run_id]
                give(RunEnded(run_id, RunOutcome.COMPLETED))
    return inputs, made
