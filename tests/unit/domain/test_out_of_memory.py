"""An out-of-memory kill is the run's own doing: it would run out again, so it is never retried."""

from __future__ import annotations

from runyard.server.domain.run_states import INFRASTRUCTURE_REASONS
from runyard.v1 import common_pb2 as S
from runyard.v1 import events_pb2

from .runs import AGENT, new_run, step


def test_out_of_memory_fails_the_run_for_good_even_with_restarts_left() -> None:
    assert S.FAILURE_REASON_OUT_OF_MEMORY not in INFRASTRUCTURE_REASONS
    run, log = new_run(max_restarts=5)
    step(run, log, lambda r: r.assign(AGENT, []))
    step(run, log, lambda r: r.report_staging(1))
    message = "used more than resources.memory (512 MiB): killed by the kernel's OOM killer"
    (failed,) = step(run, log, lambda r: r.report_failed(1, S.FAILURE_REASON_OUT_OF_MEMORY, 137, message))
    assert isinstance(failed, events_pb2.RunFailed)
    assert (run.state, run.failure_reason, run.restarts) == (S.RUN_STATE_FAILED, S.FAILURE_REASON_OUT_OF_MEMORY, 0)
