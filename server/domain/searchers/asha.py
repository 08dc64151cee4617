"""Asynchronous successive halving (ASHA) as early stopping over a sequence of trials.

After Li et al., "A System for Massively Parallel Hyperparameter Tuning"
(MLSys 2020), in its early-stopping form: runs are not paused and resumed
(a training script cannot be), they train on unless a rung stops them.

Rung k sits at `min_resource * reduction_factor**k` time units (epochs or
steps, whatever the search metric's `step` counts), for every such level below
`max_resource` (no bound when None). When a run's search-metric point first
reaches a rung's level, its value is recorded at that rung, and the decision
is made at once against the results recorded there *so far*, never waiting
for the rung to fill:

    n    = results recorded at the rung, this one included
    rank = results recorded earlier that are at least as good (0 = best)
    the run goes on (Promote) iff rank < max(1, n // reduction_factor)

so a run continues only while it is in the top 1/eta of its rung so far. The
`max(1, ...)` lets the first arrivals through, as the paper's asynchronous
promotion does (it prefers a possibly wrong promotion to an idle worker);
ties go to the earlier arrival, so the decision never depends on anything
but the order of inputs. A point that jumps past several rungs is recorded at
the highest of them only (a value after 9 epochs says nothing fair about the
rung at 3), as Ray Tune's ASHA also does. A stopped run's slot is given to the
next trial in the same set of decisions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from runyard.server.domain.manifest_model import Goal, Manifest
from runyard.server.domain.search import expand_trials
from runyard.server.domain.searchers.base import (
    Decision,
    PoolSnapshot,
    Promote,
    RunOutcome,
    StopRun,
    Trial,
    TrialPool,
    experiment_run_ids,
)

TimeUnit = Literal["epochs", "steps"]
STOP_REASON = "asha"
#: More rungs than this means a runaway configuration (r_min=1, eta=2 reaches 2**62 first).
MAX_RUNGS = 62


@dataclass(frozen=True)
class AshaConfig:
    """The rung ladder: levels min_resource * reduction_factor**k below max_resource."""

    min_resource: int = 1
    reduction_factor: int = 3
    #: The most time units a run trains; no decision is made at or above it. None: no bound.
    max_resource: int | None = None
    #: What a metric point's step counts; rungs are in the same unit.
    time_unit: TimeUnit = "epochs"

    def __post_init__(self) -> None:
        if self.min_resource < 1:
            raise ValueError("min_resource must be at least 1")
        if self.reduction_factor < 2:
            raise ValueError("reduction_factor must be at least 2")
        if self.max_resource is not None and self.max_resource <= self.min_resource:
            raise ValueError("max_resource must be greater than min_resource")

    def level(self, rung: int) -> int:
        return int(self.min_resource * self.reduction_factor**rung)

    def rung_count(self) -> int:
        """How many rungs there are (MAX_RUNGS when unbounded: later levels are never reached)."""
        if self.max_resource is None:
            return MAX_RUNGS
        count = 0
        while self.level(count) < self.max_resource:
            count += 1
        return count

    def levels(self) -> list[int]:
        return [self.level(k) for k in range(self.rung_count())]


@dataclass(frozen=True)
class AshaSnapshot:
    pool: PoolSnapshot
    rungs: tuple[tuple[tuple[str, float], ...], ...]
    next_rung: tuple[tuple[str, int], ...]
    stopped: tuple[str, ...]


@dataclass
class _Rung:
    #: (run id, value) in arrival order.
    results: list[tuple[str, float]] = field(default_factory=list)


class AshaSearcher:
    """Trials in sequence order (grid or seeded random), stopped early by asynchronous successive halving."""

    def __init__(
        self,
        trials: Sequence[Trial],
        goal: Goal,
        config: AshaConfig,
        max_parallel: int | None,
        run_id_of: Callable[[int], str],
    ) -> None:
        self._pool = TrialPool(trials=list(trials), max_parallel=max_parallel, run_id_of=run_id_of)
        self._goal = goal
        self.config = config
        self._levels = config.levels()
        self._rungs = [_Rung() for _ in self._levels]
        self._next_rung: dict[str, int] = {}
        self._stopped: list[str] = []

    @classmethod
    def from_manifest(cls, manifest: Manifest, experiment_id: str, config: AshaConfig) -> AshaSearcher:
        goal = manifest.search.goal
        if goal is None:
            raise ValueError("ASHA needs search.goal (maximize or minimize)")
        return cls(
            expand_trials(manifest), goal, config, manifest.search.max_parallel, experiment_run_ids(experiment_id)
        )

    @property
    def trials(self) -> Sequence[Trial]:
        return self._pool.trials

    def start(self) -> list[Decision]:
        return self._pool.start()

    def _better_or_equal(self, a: float, b: float) -> bool:
        return a >= b if self._goal == "maximize" else a <= b

    def _rung_reached(self, step: int) -> int | None:
        """The highest rung whose level `step` has reached, or None below the first."""
        reached = None
        for k, level in enumerate(self._levels):
            if step < level:
                break
            reached = k
        return reached

    def on_metric(self, run_id: str, step: int, value: float) -> list[Decision]:
        if run_id not in self._pool.active or not math.isfinite(value):
            return []
        rung = self._rung_reached(step)
        if rung is None or rung < self._next_rung.get(run_id, 0):
            return []
        self._next_rung[run_id] = rung + 1
        results = self._rungs[rung].results
        rank = sum(1 for _, earlier in results if self._better_or_equal(earlier, value))
        results.append((run_id, value))
        level = self._levels[rung]
        if rank < max(1, len(results) // self.config.reduction_factor):
            return [Promote(run_id=run_id, rung=rung, level=level, value=value)]
        self._stopped.append(run_id)
        stop = StopRun(run_id=run_id, reason=STOP_REASON, rung=rung, level=level, value=value)
        return [stop, *self._pool.release(run_id)]

    def on_run_ended(self, run_id: str, outcome: RunOutcome) -> list[Decision]:
        return self._pool.release(run_id)

    def on_close(self, reason: str) -> list[Decision]:
        return self._pool.close(reason)

    def snapshot(self) -> AshaSnapshot:
        return AshaSnapshot(
            pool=self._pool.snapshot(),
            rungs=tuple(tuple(r.results) for r in self._rungs),
            next_rung=tuple(sorted(self._next_rung.items())),
            stopped=tuple(self._stopped),
        )
