"""ASHA early stopping: the rung ladder, and promotions and stops exactly as the algorithm prescribes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings

from runyard.server.domain.manifest import parse_manifest
from runyard.server.domain.searchers import (
    AshaConfig,
    AshaSearcher,
    Complete,
    CreateTrial,
    Promote,
    RunOutcome,
    StopRun,
    feed,
    searcher_for,
)
from tests.unit.domain.searchers.arbitrary import ACTIONS, Action, Setup, concrete_inputs, name, setups
from tests.unit.domain.searchers.oracle import expected_decisions
from tests.unit.domain.searchers.scenarios import Scenario, drive, scenarios


def asha(n: int, eta: int = 3, max_resource: int | None = 9, max_parallel: int | None = 4) -> AshaSearcher:
    trials = [{"i": i} for i in range(n)]
    config = AshaConfig(min_resource=1, reduction_factor=eta, max_resource=max_resource)
    return AshaSearcher(trials, "maximize", config, max_parallel, name)


def test_rungs_are_min_times_powers_of_eta_below_the_maximum() -> None:
    assert AshaConfig(1, 3, 27).levels() == [1, 3, 9]
    assert AshaConfig(2, 2, 20).levels() == [2, 4, 8, 16]
    assert AshaConfig(5, 4, 6).levels() == [5]
    assert AshaConfig(1, 3, None).levels()[:4] == [1, 3, 9, 27]
    with pytest.raises(ValueError, match="reduction_factor"):
        AshaConfig(1, 1, 10)
    with pytest.raises(ValueError, match="max_resource"):
        AshaConfig(4, 2, 4)


def test_a_run_goes_on_only_while_in_the_top_third_of_its_rung_so_far() -> None:
    """Worked by hand for eta = 3: keep = max(1, n // 3) of the n results recorded at the rung."""
    searcher = asha(8)
    assert [d.run_id for d in searcher.start() if isinstance(d, CreateTrial)] == [name(i) for i in range(4)]
    # n=1, keep 1: the first arrival always goes on.
    assert searcher.on_metric(name(0), 1, 0.50) == [Promote(name(0), 0, 1, 0.50)]
    # n=2, keep 1, rank 1: stopped, and run 4 takes its slot at once.
    assert searcher.on_metric(name(1), 1, 0.40) == [
        StopRun(name(1), "asha", 0, 1, 0.40),
        CreateTrial(4, name(4), {"i": 4}),
    ]
    # n=3, keep 1, rank 0 (best so far): goes on.
    assert searcher.on_metric(name(2), 1, 0.60) == [Promote(name(2), 0, 1, 0.60)]
    # n=4, keep 1, rank 1 (0.60 is better): stopped.
    assert searcher.on_metric(name(3), 1, 0.55)[0] == StopRun(name(3), "asha", 0, 1, 0.55)
    # n=5, keep 1, a tie with the best ranks after it: stopped.
    assert searcher.on_metric(name(4), 1, 0.60)[0] == StopRun(name(4), "asha", 0, 1, 0.60)
    # n=6, keep 2, rank 0; then n=7, keep 2, rank 1 (only 0.61 is better): both go on.
    assert searcher.on_metric(name(5), 2, 0.61) == [Promote(name(5), 0, 1, 0.61)]
    assert searcher.on_metric(name(6), 1, 0.605) == [Promote(name(6), 0, 1, 0.605)]
    # Steps between rungs decide nothing; rung 1 (level 3) has its own results.
    assert searcher.on_metric(name(0), 2, 0.1) == []
    assert searcher.on_metric(name(0), 3, 0.70) == [Promote(name(0), 1, 3, 0.70)]
    assert searcher.on_metric(name(2), 4, 0.65)[0] == StopRun(name(2), "asha", 1, 3, 0.65)
    # Points from a stopped run, and a rung already recorded, are ignored.
    assert searcher.on_metric(name(1), 3, 0.99) == []
    assert searcher.on_metric(name(0), 3, 0.01) == []
    # No decision at or beyond max_resource: the run simply trains to its end.
    assert searcher.on_metric(name(0), 9, 0.80) == []


def test_minimize_keeps_the_lowest_values() -> None:
    searcher = AshaSearcher([{"i": i} for i in range(3)], "minimize", AshaConfig(1, 2, 4), None, name)
    searcher.start()
    assert searcher.on_metric(name(0), 1, 0.5) == [Promote(name(0), 0, 1, 0.5)]
    assert searcher.on_metric(name(1), 1, 0.3) == [Promote(name(1), 0, 1, 0.3)]  # n=2, keep 1, rank 0
    assert searcher.on_metric(name(2), 1, 0.4)[0] == StopRun(name(2), "asha", 0, 1, 0.4)


def test_a_jump_past_several_rungs_records_at_the_highest_only() -> None:
    searcher = asha(3, eta=2, max_resource=100)
    searcher.start()
    assert searcher.on_metric(name(0), 9, 0.5) == [Promote(name(0), 3, 8, 0.5)]
    assert searcher.on_metric(name(0), 4, 0.1) == []  # lower rungs stay unrecorded
    assert searcher.snapshot().rungs[:4] == ((), (), (), ((name(0), 0.5),))


def test_non_finite_values_decide_nothing() -> None:
    searcher = asha(2)
    searcher.start()
    assert searcher.on_metric(name(0), 1, math.nan) == []
    assert searcher.on_metric(name(0), 1, 0.3) == [Promote(name(0), 0, 1, 0.3)]


def test_the_experiment_completes_when_the_last_run_stops_or_ends() -> None:
    searcher = asha(2, max_parallel=1)
    first = searcher.start()
    assert first == [CreateTrial(0, name(0), {"i": 0})]
    assert searcher.on_metric(name(0), 1, 0.9) == [Promote(name(0), 0, 1, 0.9)]
    assert searcher.on_run_ended(name(0), RunOutcome.COMPLETED) == [CreateTrial(1, name(1), {"i": 1})]
    assert searcher.on_metric(name(1), 1, 0.1) == [StopRun(name(1), "asha", 0, 1, 0.1), Complete("every trial ended")]
    assert searcher.on_run_ended(name(1), RunOutcome.STOPPED_EARLY) == []


def test_the_manifest_selects_asha_over_its_seeded_random_trials() -> None:
    manifest = parse_manifest(
        "name: s\nresults: s3://r/s\ncommand: t ${lr}\nhyperparameters: {lr: {type: log, min: 1.0e-4, max: 1}}\n"
        "search: {method: random, seed: 5, max_runs: 6, max_parallel: 2, metric: val_accuracy, goal: maximize,"
        " early_stopping: asha}\n"
    )
    searcher = searcher_for(manifest, "exp-a", AshaConfig(1, 3, 27))
    assert isinstance(searcher, AshaSearcher)
    assert searcher.config.levels() == [1, 3, 9]
    assert len([d for d in searcher.start() if isinstance(d, CreateTrial)]) == 2


@pytest.mark.parametrize("scenario", scenarios(), ids=lambda s: s.label)
def test_asha_on_a_synthetic_objective_matches_an_independent_implementation(scenario: Scenario) -> None:
    searcher = scenario.searcher()
    inputs, made = drive(searcher, scenario)
    expected = expected_decisions(
        scenario.trials,
        scenario.goal,
        scenario.min_resource,
        scenario.eta,
        scenario.max_resource,
        scenario.max_parallel,
        name,
        inputs,
    )
    assert made == expected
    decisions = [d for batch in made for d in batch]
    stopped = {d.run_id for d in decisions if isinstance(d, StopRun)}
    assert stopped, "the objective is built so that some runs fall behind"
    assert len({d.run_id for d in decisions if isinstance(d, CreateTrial)}) == len(scenario.trials)
    assert decisions[-1] == Complete("every trial ended")
    if not scenario.crossing:
        # Curves that never cross: the best configuration leads every rung it reaches, so it trains to the end.
        assert name(scenario.best_index()) not in stopped


# -- arbitrary input sequences -------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(setups(), ACTIONS)
def test_any_sequence_of_inputs_gets_the_decisions_asha_prescribes(setup: Setup, actions: list[Action]) -> None:
    inputs = concrete_inputs(setup.build, actions)
    searcher = setup.build()
    made = [feed(searcher, item) for item in inputs]
    expected = expected_decisions(
        setup.trials,
        setup.goal,
        setup.min_resource,
        setup.eta,
        setup.max_resource,
        setup.max_parallel,
        name,
        inputs,
    )
    assert made == expected
