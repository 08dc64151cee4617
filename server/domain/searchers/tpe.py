"""Bayesian search: Optuna's TPE sampler picks each new trial from the results so far.

Unlike grid and random search, the next trial depends on how earlier ones
did, so trials are asked for one by one as slots free: `max_parallel` at the
start, then one per ended run, up to `max_runs`. A run's result is the best
value of the search metric it reported (as the leaderboard ranks it); a run
that failed, was canceled or reported nothing is told to Optuna as failed, so
TPE learns nothing from it.

Still a pure searcher: the Optuna study lives in memory (no storage, no
threads) and its sampler is seeded with `search.seed`, so the same inputs in
the same order ask the same trials. That is what an experiment's replay after
a restart relies on (tested by feeding a fresh searcher the same inputs).
Optuna is imported when the first TPE experiment is built, not by every server.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from runyard.server.domain.manifest_model import (
    Categorical,
    Const,
    DoubleRange,
    Goal,
    Hyperparameter,
    IntRange,
    LogRange,
    Manifest,
    Scalar,
)
from runyard.server.domain.searchers.base import (
    Complete,
    CreateTrial,
    Decision,
    RunOutcome,
    experiment_run_ids,
)

#: Trials in flight when the manifest sets no max_parallel: TPE learns only from ended runs.
DEFAULT_PARALLEL = 4


@dataclass(frozen=True)
class TpeSnapshot:
    created: int
    active: tuple[str, ...]
    told: tuple[tuple[int, float | None], ...]
    params: tuple[tuple[tuple[str, Scalar], ...], ...]
    closed: str | None
    completed: bool


def _distributions(hps: Mapping[str, Hyperparameter]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, hp in hps.items():
        if isinstance(hp, IntRange):
            out[name] = IntDistribution(hp.min, hp.max, step=hp.step)
        elif isinstance(hp, LogRange):
            out[name] = FloatDistribution(hp.min, hp.max, log=True)
        elif isinstance(hp, DoubleRange):
            out[name] = FloatDistribution(hp.min, hp.max)
        elif isinstance(hp, Categorical):
            out[name] = CategoricalDistribution(list(hp.values))
    return out


class TpeSearcher:
    """Trials asked of a seeded Optuna TPE study, told the best search-metric value of each ended run."""

    def __init__(
        self,
        hyperparameters: Mapping[str, Hyperparameter],
        goal: Goal,
        max_runs: int,
        max_parallel: int | None,
        seed: int,
        run_id_of: Callable[[int], str],
    ) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._study = optuna.create_study(
            direction="maximize" if goal == "maximize" else "minimize",
            # Random trials before TPE models the results: Optuna's 10, fewer for a small budget.
            sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, max_runs // 3))),
        )
        self._fixed = {name: hp.value for name, hp in hyperparameters.items() if isinstance(hp, Const)}
        self._distributions = _distributions(hyperparameters)
        self._goal = goal
        self._max_runs = max_runs
        self._parallel = max_parallel or min(max_runs, DEFAULT_PARALLEL)
        self._run_id_of = run_id_of
        self._started = False
        self._trials: dict[str, Any] = {}  # run id -> its optuna trial, while active
        self._best: dict[str, float] = {}
        self._told: list[tuple[int, float | None]] = []
        self._params: list[tuple[tuple[str, Scalar], ...]] = []
        self._closed: str | None = None
        self._completed = False

    @classmethod
    def from_manifest(cls, manifest: Manifest, experiment_id: str) -> TpeSearcher:
        search = manifest.search
        if search.goal is None or search.max_runs is None:
            raise ValueError("TPE needs search.goal and search.max_runs")
        return cls(
            manifest.hyperparameters,
            search.goal,
            search.max_runs,
            search.max_parallel,
            search.seed,
            experiment_run_ids(experiment_id),
        )

    def start(self) -> list[Decision]:
        if self._started:
            return []
        self._started = True
        return self._refill()

    def _refill(self) -> list[Decision]:
        if self._completed:
            return []
        decisions: list[Decision] = []
        while self._closed is None and len(self._params) < self._max_runs and len(self._trials) < self._parallel:
            index = len(self._params)
            trial = self._study.ask(self._distributions)
            values: dict[str, Scalar] = {**self._fixed, **trial.params}
            run_id = self._run_id_of(index)
            self._trials[run_id] = trial
            self._params.append(tuple(sorted(values.items())))
            decisions.append(CreateTrial(index=index, run_id=run_id, hyperparameters=values))
        if not self._trials and (self._closed is not None or len(self._params) == self._max_runs):
            self._completed = True
            decisions.append(Complete(reason=self._closed or "every trial ended"))
        return decisions

    def on_metric(self, run_id: str, step: int, value: float) -> list[Decision]:
        if run_id not in self._trials or not math.isfinite(value):
            return []
        best = self._best.get(run_id)
        better = best is None or (value > best if self._goal == "maximize" else value < best)
        if better:
            self._best[run_id] = value
        return []

    def on_run_ended(self, run_id: str, outcome: RunOutcome) -> list[Decision]:
        from optuna.trial import TrialState

        trial = self._trials.pop(run_id, None)
        if trial is None:
            return []
        value = self._best.get(run_id)
        if value is not None and outcome in (RunOutcome.COMPLETED, RunOutcome.STOPPED_EARLY):
            self._study.tell(trial, value)
            self._told.append((trial.number, value))
        else:
            self._study.tell(trial, state=TrialState.FAIL)
            self._told.append((trial.number, None))
        return self._refill()

    def on_close(self, reason: str) -> list[Decision]:
        if self._closed is not None or self._completed:
            return []
        self._closed = reason
        return self._refill() if self._started else []

    def on_run_paused(self, run_id: str) -> list[Decision]:
        return []  # paused by its owner: the run keeps its slot

    def on_run_resumed(self, run_id: str, rung: int) -> list[Decision]:
        return []

    def snapshot(self) -> TpeSnapshot:
        return TpeSnapshot(
            created=len(self._params),
            active=tuple(self._trials),
            told=tuple(self._told),
            params=tuple(self._params),
            closed=self._closed,
            completed=self._completed,
        )
