"""ASHA's pause variant over the log: the driver's decisions become pauses and resumes of the Run aggregate.

The simulated cluster of `test_search_state` plays driver and agents: a pause
decision is RunPauseRequested (the agent stops the attempt with a checkpoint
and it is PAUSED), a promotion RunResumed (the next attempt resumes from the
checkpoint, so its epochs go on), a run never promoted is stopped from PAUSED.
The decisions must be those of a bare `AshaPauseSearcher` fed the same inputs,
a function of the log alone, and paused time must hold no GPU time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runyard.server.domain.ids import run_id_for
from runyard.server.domain.manifest import expand_trials
from runyard.server.domain.manifest_model import Manifest
from runyard.server.domain.search_state import INPUT_TYPES, NewBest, Numbered, Searches
from runyard.server.domain.searchers import (
    AshaConfig,
    AshaPauseSearcher,
    Complete,
    Decision,
    Paused,
    PauseRun,
    Resumed,
    ResumeRun,
    SearcherInput,
    StopRun,
    feed,
    searcher_for,
)
from runyard.server.domain.searchers.asha import NOT_PROMOTED
from runyard.v1 import common_pb2, events_pb2
from tests.unit.domain.test_search_state import MAX_EPOCHS, Cluster, Entry, asha_yaml, feed_all, searcher_inputs

EXP = "exp-asha-pause"
LADDER = AshaConfig(min_resource=2, reduction_factor=2, max_resource=16, time_unit="epochs", mode="pause")


def pause_yaml(seed: int = 11, runs: int = 14) -> str:
    return asha_yaml(seed, runs).replace("time_unit: epochs}", "time_unit: epochs, mode: pause}")


@dataclass
class PauseCluster(Cluster):
    """The cluster, with agents that stop a pausing attempt after a last checkpoint and resume from it."""

    checkpoint: dict[str, int] = field(default_factory=dict)

    def record(self, action: Decision | NewBest) -> None:
        if isinstance(action, PauseRun):
            self.command(action.run_id, lambda r: r.request_pause("asha", action.rung + 1))
        elif isinstance(action, ResumeRun):
            self.command(action.run_id, lambda r: r.resume("asha", action.rung))
        else:
            super().record(action)

    def minute(self) -> None:
        self.now += timedelta(minutes=1)
        order = list(self.runs)
        if self.rng is not None:
            self.rng.shuffle(order)
        for run_id in order:
            run = self.runs[run_id]
            if run.is_terminal or run.state == common_pb2.RUN_STATE_PAUSED:
                continue
            if run.state == common_pb2.RUN_STATE_QUEUED:
                self.epochs[run_id] = self.checkpoint.get(run_id, 0)  # staged from its latest checkpoint
                self.command(run_id, lambda r: r.assign("agent-1", ["0", "1"]))
                self.command(run_id, lambda r: r.report_staging(r.attempt))
                self.command(run_id, lambda r: r.report_started(r.attempt))
            elif run.stop_requested or run.pause_requested:
                if self.rng is not None and self.rng.random() < 0.5 and self.epochs[run_id] < MAX_EPOCHS:
                    self.report_metrics(run_id)  # the agent had not seen the request yet
                self.checkpoint[run_id] = self.epochs[run_id]  # the last checkpoint, after the process ended
                self.command(run_id, lambda r: r.report_canceled(r.attempt, "stopped"))
            elif self.rng is not None and self.rng.random() < 0.02:
                self.checkpoint[run_id] = self.epochs[run_id]
                self.command(run_id, lambda r: r.agent_lost("agent-1"))
            else:
                self.report_metrics(run_id)
                if self.epochs[run_id] >= MAX_EPOCHS:
                    self.command(run_id, lambda r: r.report_uploading(r.attempt, 0))
                    self.command(run_id, lambda r: r.report_completed(r.attempt, ""))


def pause_inputs(entry: Entry) -> list[SearcherInput]:
    """What an input event tells the pause searcher, independently of `Searches`."""
    run_id = entry.stream_id.partition(":")[2]
    if isinstance(entry.msg, events_pb2.RunPaused):
        return [Paused(run_id)]
    if isinstance(entry.msg, events_pb2.RunResumed):
        return [Resumed(run_id, entry.msg.rung)]
    return searcher_inputs(entry, "val_accuracy")


def expected_for(log: Sequence[Entry], manifest: Manifest) -> list[Decision]:
    bare = AshaPauseSearcher(expand_trials(manifest), "maximize", LADDER, 4, lambda i: run_id_for(EXP, i))
    return [d for e in log if isinstance(e.msg, INPUT_TYPES) for item in pause_inputs(e) for d in feed(bare, item)]


def searcher_part(decisions: Sequence[Numbered]) -> list[Decision]:
    return [n.action for n in decisions if not isinstance(n.action, NewBest)]


def test_the_manifest_asks_for_the_pause_variant() -> None:
    cluster = PauseCluster(EXP, pause_yaml())
    searcher = searcher_for(cluster.manifest, EXP)
    assert isinstance(searcher, AshaPauseSearcher) and searcher.config == LADDER


def test_runs_pause_at_rungs_resume_from_their_checkpoint_and_those_never_promoted_are_stopped() -> None:
    cluster = PauseCluster(EXP, pause_yaml())
    cluster.run_to_the_end()
    actions = searcher_part(cluster.decisions)
    assert actions == expected_for(cluster.log, cluster.manifest)

    events = [(e.stream_id.partition(":")[2], e.msg) for e in cluster.log if e.stream_id.startswith("run:")]
    pause_requests = [m for _, m in events if isinstance(m, events_pb2.RunPauseRequested)]
    resumes = [m for _, m in events if isinstance(m, events_pb2.RunResumed)]
    assert pause_requests and all(m.rung >= 1 and m.reason == "asha" for m in pause_requests), "rung > 0: ASHA"
    assert resumes and all(m.rung >= 1 and m.reason == "asha" for m in resumes)
    assert len([m for _, m in events if isinstance(m, events_pb2.RunPaused)]) == len(pause_requests)

    # A resumed run trains on from its checkpoint: no epoch of a run is reported by two attempts.
    for run_id in cluster.runs:
        steps = [
            p.step
            for e in cluster.log
            if isinstance(e.msg, events_pb2.RunMetricsReported) and e.msg.run_id == run_id
            for p in e.msg.points
            if p.name == "val_accuracy" and math.isfinite(p.value)
        ]
        assert steps == sorted(set(steps)), f"{run_id} trained an epoch twice: {steps}"

    # Runs never promoted end STOPPED_EARLY from PAUSED (attempt 0: no agent to stop); the rest completed.
    not_promoted = {a.run_id for a in actions if isinstance(a, StopRun)}
    assert not_promoted and all(a.reason == NOT_PROMOTED for a in actions if isinstance(a, StopRun))
    ends = {r: m for r, m in events if isinstance(m, events_pb2.RunStoppedEarly | events_pb2.RunCompleted)}
    assert {r for r, m in ends.items() if isinstance(m, events_pb2.RunStoppedEarly)} == not_promoted
    assert all(ends[r].attempt == 0 for r in not_promoted)
    assert {r for r, m in ends.items() if isinstance(m, events_pb2.RunCompleted)}, "some run trained to the end"
    assert set(ends) == set(cluster.runs)
    assert [a for a in actions if isinstance(a, Complete)] == [Complete("every trial ended")]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), trials_seed=st.integers(0, 50), cut=st.floats(0, 1))
def test_pause_decisions_are_a_function_of_the_log(seed: int, trials_seed: int, cut: float) -> None:
    cluster = PauseCluster(EXP, pause_yaml(seed=trials_seed, runs=10), rng=random.Random(seed))
    cluster.run_to_the_end()
    log, live = cluster.log, cluster.decisions
    assert feed_all(Searches(), log) == live
    k = int(cut * len(log))
    restarted = Searches()
    before = feed_all(restarted, log[:k])
    assert before == live[: len(before)]
    assert before + feed_all(restarted, log[k:]) == live
    assert searcher_part(live) == expected_for(log, cluster.manifest)


def test_paused_time_holds_no_gpu_time() -> None:
    cluster = PauseCluster(EXP, pause_yaml())
    cluster.run_to_the_end()
    searches = Searches()
    feed_all(searches, cluster.log)
    search = searches.get(EXP)
    assert search is not None
    ends = (
        events_pb2.RunPaused,
        events_pb2.RunRequeued,
        events_pb2.RunCompleted,
        events_pb2.RunStoppedEarly,
        events_pb2.RunFailed,
        events_pb2.RunCanceled,
    )
    held: dict[str, datetime] = {}
    expected = 0.0
    for e in cluster.log:
        run_id = e.stream_id.partition(":")[2]
        if isinstance(e.msg, events_pb2.RunAssigned):
            held[run_id] = e.recorded_at
        elif isinstance(e.msg, ends) and run_id in held:
            expected += 2 * (e.recorded_at - held.pop(run_id)).total_seconds()  # 2 GPUs per run
    assert any(isinstance(e.msg, events_pb2.RunPaused) for e in cluster.log)
    assert search.gpu_seconds == expected > 0
