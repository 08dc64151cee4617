"""A graceful agent shutdown is an infrastructure event: its running runs go back to the queue, uncharged.

Before, stopping an agent (`runyard down`, an upgrade) with runs in flight ended them FAILED for
good ("failure INTERNAL (exit code 143)", "agent shutting down") once max_restarts was used up,
and counted the stop against it otherwise. Real processes: server, agents (sandboxed by bwrap
where it works), PostgreSQL, NATS.
"""

from __future__ import annotations

import signal

import pytest
from google.protobuf.message import Message

from runyard.server.domain.events import decode
from runyard.server.domain.run import Run
from runyard.server.store import EventStore
from runyard.v1 import common_pb2, events_pb2, resources_pb2, run_service_pb2
from tests.integration.scheduling.helpers import manifest, submit, wait_until
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration
RS = common_pb2.RunState

AGENT_FLAGS = ("--gpus", "1xH100", "--cancel-grace", "1")
# Long enough to be stopped while it runs; short enough that the second attempt completes soon.
COMMAND = "echo started; sleep 4; echo done"


def the_run(stubs: Stubs, experiment_id: str) -> resources_pb2.Run:
    (run,) = stubs.runs.ListRuns(run_service_pb2.ListRunsRequest(experiment_id=experiment_id), timeout=10).runs
    return run


def replayed(database_url: str, run_id: str) -> tuple[Run, list[Message]]:
    store = EventStore.open(database_url, migrate=False, pool_size=1, max_overflow=0)
    try:
        events = [decode(e.type, e.data) for e in store.read_stream(f"run:{run_id}")]
    finally:
        store.close()
    return Run.replay(events), events


@pytest.mark.parametrize("max_restarts", [0, 1])
def test_a_run_on_a_stopped_agent_is_requeued_uncharged_and_completes_elsewhere(
    stack: Stack, max_restarts: int
) -> None:
    stack.start_server()
    with stack.channel() as channel:
        stubs = Stubs(channel)
        first = stack.start_agent("gpu-a", 1, *AGENT_FLAGS)
        exp = submit(stubs, manifest("shutdown", COMMAND, gpus=1, extra=f"max_restarts: {max_restarts}\n"))
        wait_until(
            "the run to run on gpu-a",
            lambda: the_run(stubs, exp.id).state == RS.RUN_STATE_RUNNING,
            timeout=60,
            stack=stack,
        )
        run_id = the_run(stubs, exp.id).id

        assert first.stop(signal.SIGTERM) == 0  # graceful: the agent's stop event, as `runyard down` does
        queued: resources_pb2.Run = wait_until(
            "the run back in the queue",
            lambda: r if (r := the_run(stubs, exp.id)).state == RS.RUN_STATE_QUEUED else None,
            timeout=30,
            stack=stack,
        )
        assert queued.attempt == 1
        run, events = replayed(stack.database_url, run_id)
        requeued = [e for e in events if isinstance(e, events_pb2.RunRequeued)]
        assert [(e.reason, e.message) for e in requeued] == [
            (common_pb2.FAILURE_REASON_AGENT_SHUTDOWN, "agent shutting down")
        ]
        assert run.restarts == 0 and not any(isinstance(e, events_pb2.RunFailed) for e in events)

        stack.start_agent("gpu-b", 1, *AGENT_FLAGS)
        ended = (RS.RUN_STATE_COMPLETED, RS.RUN_STATE_FAILED)
        done: resources_pb2.Run = wait_until(
            "the run to complete on gpu-b",
            lambda: r if (r := the_run(stubs, exp.id)).state in ended else None,
            timeout=60,
            stack=stack,
        )
        assert done.state == RS.RUN_STATE_COMPLETED, done
        assert (done.attempt, done.agent_id) == (2, "gpu-b")
        run, _ = replayed(stack.database_url, run_id)
        assert run.restarts == 0
