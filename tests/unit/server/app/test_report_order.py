"""Whether a refused report came early or late is read from the run state machine, not a table of ingest's own."""

from __future__ import annotations

from runyard.server.app.reports import REPORTED_EVENTS
from runyard.server.domain.run_states import is_ahead, state_name
from runyard.v1 import common_pb2

# The ordering ingest kept before (consumer.py `_STAGE`, `_REPORT_STAGE`): the new one must agree with it.
OLD_STAGE = {"QUEUED": 0, "ASSIGNED": 1, "STAGING": 2, "RUNNING": 3, "UPLOADING": 4}
OLD_REPORT_STAGE = {"staging": 2, "started": 3, "uploading": 4, "completed": 5, "failed": 5, "canceled": 5}


def test_every_state_and_report_is_judged_as_ingest_judged_it() -> None:
    states = [state_name(v) for v in common_pb2.RunState.values()] + ["NOT-A-STATE"]
    for state in states:
        for body, event in REPORTED_EVENTS.items():
            expected = OLD_STAGE.get(state, 5) < OLD_REPORT_STAGE[body]
            assert is_ahead(state, event) == expected, (state, body)


def test_a_start_before_staging_is_early_and_a_staging_after_the_start_is_late() -> None:
    assert is_ahead("ASSIGNED", REPORTED_EVENTS["started"])
    assert not is_ahead("RUNNING", REPORTED_EVENTS["staging"])
    assert not is_ahead("COMPLETED", REPORTED_EVENTS["completed"])
