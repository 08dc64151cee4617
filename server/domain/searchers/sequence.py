"""Grid and random search: a fixed sequence of trials, run to the end, a few at a time.

The trials are exactly `search.expand_trials(manifest)` (the grid product in
written order, or `max_runs` draws from `random.Random(seed)`), so an adaptive
experiment and a manifest expanded all at once agree on which hyperparameters
run `index` gets. The sequence is fixed when the searcher is built, which is
what makes random search replayable: no generator state lives in the searcher.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runyard.server.domain.manifest_model import Manifest
from runyard.server.domain.search_space import expand_trials
from runyard.server.domain.searchers.base import (
    Decision,
    PoolSnapshot,
    RunOutcome,
    Trial,
    TrialPool,
    experiment_run_ids,
)


@dataclass(frozen=True)
class SequenceSnapshot:
    pool: PoolSnapshot


class SequenceSearcher:
    """Hands out trials in order into at most `max_parallel` slots; never stops a run early."""

    def __init__(self, trials: Sequence[Trial], max_parallel: int | None, run_id_of: Callable[[int], str]) -> None:
        self._pool = TrialPool(trials=list(trials), max_parallel=max_parallel, run_id_of=run_id_of)

    @classmethod
    def from_manifest(cls, manifest: Manifest, experiment_id: str) -> SequenceSearcher:
        return cls(expand_trials(manifest), manifest.search.max_parallel, experiment_run_ids(experiment_id))

    @property
    def trials(self) -> Sequence[Trial]:
        return self._pool.trials

    def start(self) -> list[Decision]:
        return self._pool.start()

    def on_metric(self, run_id: str, step: int, value: float) -> list[Decision]:
        return []

    def on_run_ended(self, run_id: str, outcome: RunOutcome) -> list[Decision]:
        return self._pool.release(run_id)

    def on_close(self, reason: str) -> list[Decision]:
        return self._pool.close(reason)

    def on_run_paused(self, run_id: str) -> list[Decision]:
        return []  # paused by its owner: the run keeps its slot

    def on_run_resumed(self, run_id: str, rung: int) -> list[Decision]:
        return []

    def snapshot(self) -> SequenceSnapshot:
        return SequenceSnapshot(pool=self._pool.snapshot())
