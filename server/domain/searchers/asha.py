"""Asynchronous successive halving (ASHA) over a sequence of trials: stop-only, or pause and promote.

After Li et al., "A System for Massively Parallel Hyperparameter Tuning"
(MLSys 2020). Two variants, chosen by `search.asha.mode`:

* `stop` (the default, `AshaSearcher`): the early-stopping form, for scripts
  that cannot resume: runs train on unless a rung stops them (below).
* `pause` (`AshaPauseSearcher`): the paper's Algorithm 2, for scripts that
  checkpoint and resume: a run that reaches a rung is paused with its
  checkpoint, and a free slot goes to the best promotable paused run, which
  resumes where it stopped (see that class).

Rung k sits at `min_resource * reduction_factor**k` time units (epochs or
steps, whatever the search metric's `step` counts), for every such level below
`max_resource` (no bound when None). In the stop-only variant, when a run's
search-metric point first reaches a rung's level, its value is recorded at
that rung, and the decision is made at once against the results recorded there *so far*, never waiting
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
from runyard.server.domain.search_space import expand_trials
from runyard.server.domain.searchers.base import (
    Complete,
    Decision,
    PauseRun,
    PoolSnapshot,
    Promote,
    ResumeRun,
    RunOutcome,
    StopRun,
    Trial,
    TrialPool,
    experiment_run_ids,
)

TimeUnit = Literal["epochs", "steps"]
AshaMode = Literal["stop", "pause"]
STOP_REASON = "asha"
#: Why a paused run is stopped when the search ends without promoting it.
NOT_PROMOTED = "asha: not promoted"
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
    #: "stop": stop runs that miss a rung's cut; "pause": pause every run at its rung, resume the promoted ones.
    mode: AshaMode = "stop"

    def __post_init__(self) -> None:
        if self.min_resource < 1:
            raise ValueError("min_resource must be at least 1")
        if self.reduction_factor < 2:
            raise ValueError("reduction_factor must be at least 2")
        if self.max_resource is not None and self.max_resource <= self.min_resource:
            raise ValueError("max_resource must be greater than min_resource")
        if self.mode == "pause" and self.max_resource is None:
            raise ValueError("ASHA's pause mode needs max_resource (a run promoted past the last rung trains to it)")

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
        return cls(*_manifest_args(manifest, experiment_id, config))

    @property
    def trials(self) -> Sequence[Trial]:
        return self._pool.trials

    def start(self) -> list[Decision]:
        return self._pool.start()

    def _better_or_equal(self, a: float, b: float) -> bool:
        return a >= b if self._goal == "maximize" else a <= b

    def on_metric(self, run_id: str, step: int, value: float) -> list[Decision]:
        if run_id not in self._pool.active or not math.isfinite(value):
            return []
        rung = _rung_reached(self._levels, step)
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

    def on_run_paused(self, run_id: str) -> list[Decision]:
        return []  # paused by its owner: the run keeps its slot

    def on_run_resumed(self, run_id: str, rung: int) -> list[Decision]:
        return []

    def snapshot(self) -> AshaSnapshot:
        return AshaSnapshot(
            pool=self._pool.snapshot(),
            rungs=tuple(tuple(r.results) for r in self._rungs),
            next_rung=tuple(sorted(self._next_rung.items())),
            stopped=tuple(self._stopped),
        )


@dataclass(frozen=True)
class AshaPauseSnapshot:
    pool: PoolSnapshot
    rungs: tuple[tuple[tuple[str, float], ...], ...]
    next_rung: tuple[tuple[str, int], ...]
    pausing: tuple[tuple[str, int], ...]
    paused: tuple[tuple[str, int], ...]
    promoted: tuple[tuple[str, ...], ...]
    stopped: tuple[str, ...]


class AshaPauseSearcher:
    """ASHA with promotions (the paper's Algorithm 2): runs pause at every rung and the best are resumed.

    A run trains from scratch to the first rung. When its search-metric point
    reaches rung k (the highest rung its step reached, as in the stop-only
    variant), its value is recorded there and its slot is free. The free slot
    goes to the paper's `get_job`: from the highest rung down, the best run in
    the top `n // reduction_factor` of the n results recorded at that rung
    that is paused there and not yet promoted from it is resumed from its
    checkpoint for rung k + 1 (`ResumeRun`; past the last rung, it trains to
    max_resource); with none promotable, the next trial starts from scratch
    (`CreateTrial`). If that job is the run that just arrived, it simply
    trains on (`Promote`); otherwise it is paused at rung k (`PauseRun`).
    Unlike the stop-only variant there is no `max(1, ...)`: a run is promoted
    only once the rung holds `reduction_factor` results per promotion, so a
    rung of fewer than `reduction_factor` runs promotes nothing.

    Only a run whose RunPaused was read (`on_run_paused`) is resumed: a
    resume of a run still stopping would be refused. A run paused or resumed
    by its owner rather than by this searcher keeps (or takes) a slot, as any
    live run. When nothing is left to create, no run trains, none is still
    pausing and none is promotable, every paused run still waiting is stopped
    (`StopRun`, reason NOT_PROMOTED: it ends STOPPED_EARLY from PAUSED) and
    the search completes. Closing (cancel, budget) stops the paused and
    pausing runs at once and promotes nothing more.
    """

    def __init__(
        self,
        trials: Sequence[Trial],
        goal: Goal,
        config: AshaConfig,
        max_parallel: int | None,
        run_id_of: Callable[[int], str],
    ) -> None:
        if config.max_resource is None:
            raise ValueError("ASHA's pause mode needs max_resource")
        self._pool = TrialPool(trials=list(trials), max_parallel=max_parallel, run_id_of=run_id_of)
        self._goal = goal
        self.config = config
        self._max_resource = config.max_resource
        self._levels = config.levels()
        self._rungs: list[list[tuple[str, float]]] = [[] for _ in self._levels]
        self._next_rung: dict[str, int] = {}
        #: Runs asked to pause (their RunPaused not read yet) and confirmed paused, by the rung they wait at.
        self._pausing: dict[str, int] = {}
        self._paused: dict[str, int] = {}
        #: Per rung, the runs promoted from it, in promotion order.
        self._promoted: list[list[str]] = [[] for _ in self._levels]
        self._stopped: list[str] = []

    @classmethod
    def from_manifest(cls, manifest: Manifest, experiment_id: str, config: AshaConfig) -> AshaPauseSearcher:
        return cls(*_manifest_args(manifest, experiment_id, config))

    @property
    def trials(self) -> Sequence[Trial]:
        return self._pool.trials

    @property
    def levels(self) -> list[int]:
        return list(self._levels)

    def level_of(self, rung: int) -> int:
        """Time units a run trains to for rung `rung` (max_resource past the last rung)."""
        return self._levels[rung] if rung < len(self._levels) else self._max_resource

    def top(self, rung: int) -> list[str]:
        """The runs in the top `n // reduction_factor` of rung `rung`'s n results (ties: earlier arrival first)."""
        results = self._rungs[rung]
        sign = -1.0 if self._goal == "maximize" else 1.0
        ranked = sorted(range(len(results)), key=lambda i: (sign * results[i][1], i))
        keep = len(results) // self.config.reduction_factor
        return [results[i][0] for i in ranked[:keep]]

    def _value_at(self, run_id: str, rung: int) -> float:
        return next(v for r, v in self._rungs[rung] if r == run_id)

    # -- inputs ---------------------------------------------------------------------

    def start(self) -> list[Decision]:
        if self._pool.started:
            return []
        self._pool.started = True
        return self._fill()

    def on_metric(self, run_id: str, step: int, value: float) -> list[Decision]:
        pool = self._pool
        if run_id not in pool.active or pool.closed is not None or not math.isfinite(value):
            return []
        rung = _rung_reached(self._levels, step)
        if rung is None or rung < self._next_rung.get(run_id, 0):
            return []
        self._next_rung[run_id] = rung + 1
        self._rungs[rung].append((run_id, value))
        level = self._levels[rung]
        if self._job(arriving=(run_id, rung)) == (run_id, rung):
            self._promoted[rung].append(run_id)  # its own slot's next job: it trains on
            return [Promote(run_id=run_id, rung=rung, level=level, value=value)]
        del pool.active[run_id]
        self._pausing[run_id] = rung
        return [PauseRun(run_id=run_id, rung=rung, level=level, value=value), *self._fill()]

    def on_run_paused(self, run_id: str) -> list[Decision]:
        rung = self._pausing.pop(run_id, None)
        if rung is None:
            return []  # paused by its owner: it keeps its slot
        self._paused[run_id] = rung
        return self._fill()

    def on_run_resumed(self, run_id: str, rung: int) -> list[Decision]:
        if run_id not in self._paused:
            return []  # this searcher's own promotion (already counted), or an owner's resume of a live run
        del self._paused[run_id]  # resumed by its owner: it trains again, in a slot
        self._pool.active[run_id] = self._pool.index_of[run_id]
        return []

    def on_run_ended(self, run_id: str, outcome: RunOutcome) -> list[Decision]:
        held = self._pool.active.pop(run_id, None) is not None
        waiting = self._pausing.pop(run_id, None) is not None or self._paused.pop(run_id, None) is not None
        return self._fill() if held or waiting else []

    def on_close(self, reason: str) -> list[Decision]:
        pool = self._pool
        if pool.closed is not None or pool.completed:
            return []
        pool.closed = reason
        if not pool.started:
            return []
        decisions: list[Decision] = []
        for run_id, rung in [*self._pausing.items(), *self._paused.items()]:
            decisions.append(self._stop(run_id, rung, reason))
        self._pausing.clear()
        self._paused.clear()
        return [*decisions, *self._fill()]

    # -- get_job ----------------------------------------------------------------

    def _job(self, arriving: tuple[str, int] | None = None) -> tuple[str, int] | None:
        """The paper's get_job: (run, rung) to promote from the highest rung that has one; None: a new trial.

        `arriving` counts as paused at its rung (it is the run whose slot is being given).
        """
        if self._pool.closed is not None:
            return None
        for rung in range(len(self._levels) - 1, -1, -1):
            promoted = self._promoted[rung]
            for run_id in self.top(rung):
                if run_id in promoted:
                    continue
                if self._paused.get(run_id) == rung or arriving == (run_id, rung):
                    return run_id, rung
        return None

    def _fill(self) -> list[Decision]:
        """Give every free slot a job (a promotion first, else a new trial); complete when nothing is left."""
        pool = self._pool
        if pool.completed:
            return []
        decisions: list[Decision] = []
        while pool.has_free_slot:
            job = self._job()
            if job is not None:
                decisions.append(self._resume(*job))
            elif pool.can_create:
                decisions.append(pool.create_one())
            else:
                break
        if not pool.active and not self._pausing and not pool.can_create and self._job() is None:
            reason = pool.closed or "every trial ended"
            for run_id, rung in list(self._paused.items()):
                decisions.append(self._stop(run_id, rung, NOT_PROMOTED))
            self._paused.clear()
            pool.completed = True
            decisions.append(Complete(reason=reason))
        return decisions

    def _resume(self, run_id: str, rung: int) -> ResumeRun:
        del self._paused[run_id]
        self._promoted[rung].append(run_id)
        self._pool.active[run_id] = self._pool.index_of[run_id]
        value = self._value_at(run_id, rung)
        return ResumeRun(run_id=run_id, rung=rung + 1, level=self.level_of(rung + 1), value=value)

    def _stop(self, run_id: str, rung: int, reason: str) -> StopRun:
        self._stopped.append(run_id)
        return StopRun(
            run_id=run_id, reason=reason, rung=rung, level=self._levels[rung], value=self._value_at(run_id, rung)
        )

    def snapshot(self) -> AshaPauseSnapshot:
        return AshaPauseSnapshot(
            pool=self._pool.snapshot(),
            rungs=tuple(tuple(r) for r in self._rungs),
            next_rung=tuple(sorted(self._next_rung.items())),
            pausing=tuple(self._pausing.items()),
            paused=tuple(self._paused.items()),
            promoted=tuple(tuple(p) for p in self._promoted),
            stopped=tuple(self._stopped),
        )


def _manifest_args(
    manifest: Manifest, experiment_id: str, config: AshaConfig
) -> tuple[Sequence[Trial], Goal, AshaConfig, int | None, Callable[[int], str]]:
    """What either ASHA searcher is built from: the manifest's trials, goal and parallelism."""
    goal = manifest.search.goal
    if goal is None:
        raise ValueError("ASHA needs search.goal (maximize or minimize)")
    return expand_trials(manifest), goal, config, manifest.search.max_parallel, experiment_run_ids(experiment_id)


def _rung_reached(levels: Sequence[int], step: int) -> int | None:
    """The highest rung whose level `step` has reached, or None below the first."""
    reached = None
    for k, level in enumerate(levels):
        if step < level:
            break
        reached = k
    return reached
