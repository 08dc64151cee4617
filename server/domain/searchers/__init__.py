"""Searchers: which runs an experiment starts, and which it stops early, decided from events alone.

The interface (`Searcher` in `base`) is six inputs and six decisions; a new
strategy (Bayesian, Optuna-backed, population based) implements those seven
methods and nothing in the scheduler or the store changes. Every searcher is
pure: same inputs in the same order, same state and same decisions, which is
how an experiment outlives a control-plane restart. See `base` for the
contract, `sequence` for grid and random search, `asha` for early stopping (stop-only, or pause and promote),
`tpe` for Bayesian search (Optuna's TPE sampler behind the same interface).
"""

from __future__ import annotations

from runyard.server.domain.manifest_model import Manifest
from runyard.server.domain.searchers.asha import AshaConfig, AshaMode, AshaPauseSearcher, AshaSearcher, TimeUnit
from runyard.server.domain.searchers.base import (
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
    Searcher,
    SearcherInput,
    Started,
    StopRun,
    Trial,
    feed,
    replay,
)
from runyard.server.domain.searchers.sequence import SequenceSearcher

__all__ = [
    "AshaConfig",
    "AshaPauseSearcher",
    "AshaSearcher",
    "Closed",
    "Complete",
    "CreateTrial",
    "Decision",
    "MetricReported",
    "PauseRun",
    "Paused",
    "Promote",
    "ResumeRun",
    "Resumed",
    "RunEnded",
    "RunOutcome",
    "Searcher",
    "SearcherInput",
    "SequenceSearcher",
    "Started",
    "StopRun",
    "Trial",
    "feed",
    "is_searched",
    "replay",
    "searcher_for",
]


def is_searched(manifest: Manifest) -> bool:
    """True when a searcher creates the experiment's runs one by one as slots free (early stopping, max_parallel).

    Other experiments get every run at submit: nothing would decide differently later.
    """
    search = manifest.search
    return search.early_stopping == "asha" or search.max_parallel is not None or search.method == "tpe"


def searcher_for(manifest: Manifest, experiment_id: str, asha: AshaConfig | None = None) -> Searcher:
    """The searcher a manifest asks for: TPE, ASHA over its trials when early_stopping is asha, else the sequence.

    The rung ladder comes from the manifest's `search.asha` (defaults: rungs at
    1, 3, 9, ... epochs, no upper bound) unless `asha` overrides it; its `mode`
    picks stop-only ASHA (the default) or the pause-and-promote variant.
    """
    if manifest.search.method == "tpe":
        from runyard.server.domain.searchers.tpe import TpeSearcher

        return TpeSearcher.from_manifest(manifest, experiment_id)
    if manifest.search.early_stopping == "asha" or asha is not None:
        if asha is None:
            a = manifest.search.asha
            unit: TimeUnit = "steps" if a.time_unit == "steps" else "epochs"
            mode: AshaMode = "pause" if a.mode == "pause" else "stop"
            asha = AshaConfig(a.min_resource, a.reduction_factor, a.max_resource, unit, mode)
        if asha.mode == "pause":
            return AshaPauseSearcher.from_manifest(manifest, experiment_id, asha)
        return AshaSearcher.from_manifest(manifest, experiment_id, asha)
    return SequenceSearcher.from_manifest(manifest, experiment_id)
