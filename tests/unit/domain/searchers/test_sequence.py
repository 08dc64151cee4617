"""Grid and random search as searchers: which runs start, how many at once, and when the experiment is done."""

from __future__ import annotations

import itertools

from runyard.server.domain.ids import run_id_for
from runyard.server.domain.manifest import expand_trials, parse_manifest
from runyard.server.domain.searchers import (
    Complete,
    CreateTrial,
    Decision,
    RunOutcome,
    SequenceSearcher,
    searcher_for,
)

HEADER = "name: sweep\nresults: s3://r/sweep\ncommand: train ${lr} ${width} ${act}\n"

GRID = (
    HEADER
    + """
hyperparameters:
  lr: {type: log, min: 1.0e-4, max: 1.0e-1, count: 4}
  width: {type: int, min: 32, max: 96, step: 32}
  act: {type: categorical, values: [relu, tanh]}
search: {method: grid, max_parallel: 5}
"""
)


def random_manifest(seed: int, max_runs: int = 12, max_parallel: int = 3) -> str:
    return (
        HEADER
        + f"""
hyperparameters:
  lr: {{type: log, min: 1.0e-5, max: 1.0}}
  width: {{type: int, min: 16, max: 512, step: 16}}
  act: {{type: categorical, values: [relu, tanh, gelu]}}
search: {{method: random, seed: {seed}, max_runs: {max_runs}, max_parallel: {max_parallel}}}
"""
    )


def created(decisions: list[Decision]) -> list[CreateTrial]:
    return [d for d in decisions if isinstance(d, CreateTrial)]


def run_to_the_end(searcher: SequenceSearcher) -> tuple[list[Decision], int]:
    """Start, then end the oldest active run until the searcher completes; the most runs ever active at once."""
    decisions = searcher.start()
    active = [d.run_id for d in created(decisions)]
    most = len(active)
    while active:
        new = searcher.on_run_ended(active.pop(0), RunOutcome.COMPLETED)
        decisions += new
        active += [d.run_id for d in created(new)]
        most = max(most, len(active))
    return decisions, most


def test_grid_enumerates_exactly_the_product_once_each() -> None:
    searcher = SequenceSearcher.from_manifest(parse_manifest(GRID), "exp-1")
    decisions, most = run_to_the_end(searcher)
    trials = [dict(d.hyperparameters) for d in created(decisions)]
    lrs = [0.0001, 0.001, 0.01, 0.1]
    expected = [{"lr": lr, "width": w, "act": a} for lr, w, a in itertools.product(lrs, [32, 64, 96], ["relu", "tanh"])]
    assert trials == expected
    assert [d.index for d in created(decisions)] == list(range(24))
    assert most == 5
    assert decisions[-1] == Complete(reason="every trial ended")
    assert sum(isinstance(d, Complete) for d in decisions) == 1


def test_runs_are_named_as_the_experiment_names_them() -> None:
    searcher = SequenceSearcher.from_manifest(parse_manifest(GRID), "exp-xyz")
    assert [d.run_id for d in created(searcher.start())] == [run_id_for("exp-xyz", i) for i in range(5)]


def test_random_search_with_a_seed_is_reproducible() -> None:
    first, _ = run_to_the_end(SequenceSearcher.from_manifest(parse_manifest(random_manifest(7)), "e"))
    again, _ = run_to_the_end(SequenceSearcher.from_manifest(parse_manifest(random_manifest(7)), "e"))
    other, _ = run_to_the_end(SequenceSearcher.from_manifest(parse_manifest(random_manifest(8)), "e"))
    trials = [dict(d.hyperparameters) for d in created(first)]
    assert trials == [dict(d.hyperparameters) for d in created(again)]
    assert trials != [dict(d.hyperparameters) for d in created(other)]
    assert len(trials) == 12
    # The same assignments an experiment expanded all at once gives its runs.
    assert trials == [dict(t) for t in expand_trials(parse_manifest(random_manifest(7)))]


def test_random_draws_do_not_depend_on_when_runs_end() -> None:
    """Run i's hyperparameters are fixed by the seed, whatever order earlier runs finish in."""
    manifest = parse_manifest(random_manifest(3))
    in_order, _ = run_to_the_end(SequenceSearcher.from_manifest(manifest, "e"))
    searcher = SequenceSearcher.from_manifest(manifest, "e")
    decisions = searcher.start()
    active = [d.run_id for d in created(decisions)]
    while active:
        new = searcher.on_run_ended(active.pop(), RunOutcome.FAILED)  # newest first
        decisions += new
        active += [d.run_id for d in created(new)]
    assert sorted(created(decisions), key=lambda d: d.index) == created(in_order)


def test_close_starts_nothing_more_and_completes_when_the_last_run_ends() -> None:
    searcher = SequenceSearcher.from_manifest(parse_manifest(random_manifest(1)), "e")
    running = [d.run_id for d in created(searcher.start())]
    assert searcher.on_close("canceled") == []
    assert searcher.on_run_ended(running[0], RunOutcome.CANCELED) == []
    assert searcher.on_run_ended(running[1], RunOutcome.CANCELED) == []
    assert searcher.on_run_ended(running[2], RunOutcome.CANCELED) == [Complete(reason="canceled")]
    assert searcher.on_run_ended(running[2], RunOutcome.CANCELED) == []


def test_unknown_runs_and_repeated_ends_change_nothing() -> None:
    searcher = SequenceSearcher.from_manifest(parse_manifest(random_manifest(1)), "e")
    first = created(searcher.start())[0].run_id
    before = searcher.snapshot()
    assert searcher.on_run_ended("run-elsewhere", RunOutcome.COMPLETED) == []
    assert searcher.on_metric(first, 3, 0.5) == []
    assert searcher.snapshot() == before
    assert len(created(searcher.on_run_ended(first, RunOutcome.COMPLETED))) == 1
    assert searcher.on_run_ended(first, RunOutcome.COMPLETED) == []


def test_without_max_parallel_every_trial_starts_at_once() -> None:
    text = HEADER + "hyperparameters: {lr: [1, 2, 3], width: 8, act: relu}\nsearch: {method: grid}\n"
    decisions = searcher_for(parse_manifest(text), "e").start()
    assert [d.hyperparameters["lr"] for d in created(decisions)] == [1, 2, 3]
