"""The scheduler's overlay of pauses: a run paused from the queue leaves it, a paused attempt frees its GPUs."""

from __future__ import annotations

from runyard.server.queries.scheduling import overlay
from runyard.v1 import events_pb2
from tests.unit.scheduler.test_overlay import held, snapshot


def test_a_pause_takes_a_run_off_the_queue_or_frees_the_gpus_it_held() -> None:
    before = snapshot([held("r1", "g0"), held("r2", "g1")], ["r3", "r4"])
    after = overlay(
        before,
        [
            ("r3", events_pb2.RunPaused(attempt=0, reason="experiment paused"), 11),
            ("r1", events_pb2.RunPauseRequested(reason="experiment paused"), 12),
            ("r2", events_pb2.RunPauseRequested(reason="experiment paused"), 13),
            ("r2", events_pb2.RunPaused(attempt=1, reason="experiment paused"), 14),
        ],
    )
    assert after is not None
    assert [q.run_id for q in after.queue] == ["r4"], "a paused run waits for nothing: it is not queued"
    assert [h.run_id for h in after.holding] == ["r1"] and after.holding[0].cancel_requested
    assert after.agents[0].busy_gpu_ids == frozenset({"g0"}), "the paused attempt's GPU is free"
