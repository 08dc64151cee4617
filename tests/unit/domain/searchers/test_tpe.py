"""Bayesian (TPE) search behind the searcher interface: bounded, reproducible, and learning from results."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runyard.server.domain.errors import ManifestError
from runyard.server.domain.manifest import parse_manifest
from runyard.server.domain.manifest_model import Scalar
from runyard.server.domain.searchers import (
    Complete,
    CreateTrial,
    Decision,
    RunOutcome,
    is_searched,
    searcher_for,
)
from runyard.server.domain.searchers.tpe import TpeSearcher


def manifest(max_runs: int = 30, max_parallel: int = 2, seed: int = 3, goal: str = "maximize") -> str:
    return f"""
name: tpe
command: python train.py --lr ${{lr}} --width ${{width}} --act ${{act}} --epochs ${{epochs}}
results: s3://r/tpe
hyperparameters:
  lr: {{type: log, min: 1.0e-5, max: 1.0}}
  width: {{type: int, min: 16, max: 256, step: 16}}
  act: {{type: categorical, values: [relu, tanh, gelu]}}
  epochs: {{type: const, value: 5}}
search: {{method: tpe, max_runs: {max_runs}, max_parallel: {max_parallel}, seed: {seed},
         metric: acc, goal: {goal}}}
"""


def objective(hp: Mapping[str, Scalar]) -> float:
    """Best at lr = 1e-2 (distance in decades), width 128, gelu."""
    lr, width = float(hp["lr"]), int(hp["width"])
    return -abs(math.log10(lr) + 2) - abs(width - 128) / 128 + (0.3 if hp["act"] == "gelu" else 0.0)


def drive(searcher: TpeSearcher, fail: set[int] = frozenset()) -> list[Decision]:  # type: ignore[assignment]
    """Runs every trial as soon as it is created, in order; trials in `fail` fail without a metric."""
    decisions: list[Decision] = []
    pending = list(searcher.start())
    active: list[CreateTrial] = []
    while pending or active:
        while pending:
            d = pending.pop(0)
            decisions.append(d)
            if isinstance(d, CreateTrial):
                active.append(d)
        if not active:
            break
        trial = active.pop(0)
        if trial.index in fail:
            pending += searcher.on_run_ended(trial.run_id, RunOutcome.FAILED)
            continue
        searcher.on_metric(trial.run_id, 1, objective(trial.hyperparameters) - 1.0)
        searcher.on_metric(trial.run_id, 2, objective(trial.hyperparameters))
        pending += searcher.on_run_ended(trial.run_id, RunOutcome.COMPLETED)
    return decisions


def tpe(text: str) -> TpeSearcher:
    searcher = searcher_for(parse_manifest(text), "exp-tpe")
    assert isinstance(searcher, TpeSearcher)
    return searcher


def test_tpe_experiments_are_searched_and_need_a_budget_and_a_metric() -> None:
    assert is_searched(parse_manifest(manifest()))
    with pytest.raises(ManifestError) as err:
        parse_manifest(manifest().replace("max_runs: 30, ", "").replace("metric: acc, goal: maximize", ""))
    assert "search.max_runs" in str(err.value) and "search.metric" in str(err.value)
    with pytest.raises(ManifestError, match=r"search\.early_stopping"):
        parse_manifest(manifest().replace("goal: maximize", "goal: maximize, early_stopping: asha"))


def test_every_trial_is_created_once_within_max_parallel_then_complete() -> None:
    searcher = tpe(manifest(max_runs=12, max_parallel=3))
    first = searcher.start()
    assert [d.index for d in first if isinstance(d, CreateTrial)] == [0, 1, 2]
    decisions = first + drive_rest(searcher, first)
    trials = [d for d in decisions if isinstance(d, CreateTrial)]
    assert [t.index for t in trials] == list(range(12))
    assert all(t.hyperparameters["epochs"] == 5 for t in trials), "const values ride along"
    assert all(1e-5 <= float(t.hyperparameters["lr"]) <= 1.0 for t in trials)
    assert all(int(t.hyperparameters["width"]) % 16 == 0 for t in trials)
    assert [d for d in decisions if isinstance(d, Complete)] == [Complete(reason="every trial ended")]
    assert isinstance(decisions[-1], Complete)


def drive_rest(searcher: TpeSearcher, started: list[Decision]) -> list[Decision]:
    out: list[Decision] = []
    active = [d for d in started if isinstance(d, CreateTrial)]
    while active:
        assert len(active) <= 3, "never more than max_parallel trials at once"
        trial = active.pop(0)
        searcher.on_metric(trial.run_id, 1, objective(trial.hyperparameters))
        new = searcher.on_run_ended(trial.run_id, RunOutcome.COMPLETED)
        out += new
        active += [d for d in new if isinstance(d, CreateTrial)]
    return out


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 1000), fail=st.sets(st.integers(0, 9), max_size=3))
def test_the_same_inputs_ask_the_same_trials(seed: int, fail: set[int]) -> None:
    text = manifest(max_runs=10, seed=seed)
    assert drive(tpe(text), fail) == drive(tpe(text), fail)


def test_replaying_a_prefix_reaches_the_same_state() -> None:
    text = manifest(max_runs=10)
    whole = tpe(text)
    decisions = whole.start()
    inputs: list[tuple[str, float | None]] = []
    for d in decisions:
        assert isinstance(d, CreateTrial)
    trial = decisions[0]
    assert isinstance(trial, CreateTrial)
    whole.on_metric(trial.run_id, 1, 0.5)
    inputs.append((trial.run_id, 0.5))
    after = whole.on_run_ended(trial.run_id, RunOutcome.COMPLETED)
    again = tpe(text)
    assert again.start() == decisions
    again.on_metric(trial.run_id, 1, 0.5)
    assert again.on_run_ended(trial.run_id, RunOutcome.COMPLETED) == after
    assert again.snapshot() == whole.snapshot()


def test_failed_runs_teach_nothing_and_free_their_slot() -> None:
    searcher = tpe(manifest(max_runs=4, max_parallel=1))
    (first,) = searcher.start()
    assert isinstance(first, CreateTrial)
    searcher.on_metric(first.run_id, 1, 0.9)
    (second,) = searcher.on_run_ended(first.run_id, RunOutcome.FAILED)
    assert isinstance(second, CreateTrial) and second.index == 1
    assert searcher.snapshot().told == ((0, None),)


def test_tpe_learns_from_results() -> None:
    """After its random start, TPE's trials sit closer to the optimum than the random ones did."""
    decisions = drive(tpe(manifest(max_runs=40, max_parallel=1, seed=11)))
    scores = [objective(d.hyperparameters) for d in decisions if isinstance(d, CreateTrial)]
    startup, modeled = scores[:10], scores[-10:]
    assert sum(modeled) / 10 > sum(startup) / 10 + 0.3, (startup, modeled)


def test_close_stops_asking_and_completes_when_runs_end() -> None:
    searcher = tpe(manifest(max_runs=10, max_parallel=2))
    a, b = searcher.start()
    assert isinstance(a, CreateTrial) and isinstance(b, CreateTrial)
    assert searcher.on_close("canceled") == []
    assert searcher.on_run_ended(a.run_id, RunOutcome.CANCELED) == []
    assert searcher.on_run_ended(b.run_id, RunOutcome.CANCELED) == [Complete(reason="canceled")]
