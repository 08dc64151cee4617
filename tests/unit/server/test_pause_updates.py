"""WatchRun's view of a pause: pausing, PAUSED (not final: the run goes on after a resume), back to QUEUED."""

from __future__ import annotations

from runyard.client.render import status_text
from runyard.server.api.updates import UpdateBuilder
from runyard.server.domain import events as ev
from runyard.v1 import common_pb2, events_pb2
from tests.unit.server.test_search_updates import RUN, build

RS = common_pb2.RunState


def test_a_pause_shows_pausing_then_paused_then_queued_and_is_never_final() -> None:
    builder = UpdateBuilder()
    stream = ev.run_stream(RUN)
    build(stream, events_pb2.RunStarted(attempt=1), builder)
    asked = build(stream, events_pb2.RunPauseRequested(reason="experiment paused"), builder).status
    assert (asked.state, asked.final, asked.message) == (RS.RUN_STATE_RUNNING, False, "pausing: experiment paused")
    paused = build(stream, events_pb2.RunPaused(attempt=1, reason="experiment paused"), builder).status
    assert (paused.state, paused.attempt, paused.final) == (RS.RUN_STATE_PAUSED, 1, False)
    assert status_text(paused).plain.startswith("PAUSED")
    resumed = build(stream, events_pb2.RunResumed(reason="experiment resumed"), builder).status
    assert (resumed.state, resumed.final) == (RS.RUN_STATE_QUEUED, False)
