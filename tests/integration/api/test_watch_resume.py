"""WatchRun resumes from a cursor with no gap and no duplicate, across a server restart."""

from __future__ import annotations

import grpc
import pytest

from runyard.v1 import run_service_pb2, watch_pb2
from tests.integration.api.helpers import code_of, create, details, manifest, watch_all
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration

SLOW = "python -c \"import time\nfor i in range(40):\n    print('line', i, flush=True); time.sleep(0.1)\""


def test_watch_resumes_after_a_server_restart_with_no_gap_or_duplicate(stack: Stack) -> None:
    stack.start_server()
    stack.start_agent("agent-1", 1)
    with stack.channel() as channel:
        stubs = Stubs(channel)
        run_id = create(stubs, manifest(SLOW)).experiment.runs[0].id
        stream = stubs.runs.WatchRun(run_service_pb2.WatchRunRequest(run_id=run_id), timeout=60)
        first: list[watch_pb2.RunUpdate] = []
        for message in stream:
            if message.update.HasField("queue"):  # no event of its own: not part of the history
                continue
            first.append(message.update)
            lines = [ln.text for u in first if u.HasField("logs") for ln in u.logs.lines]
            if len(lines) >= 5:
                break
        stream.cancel()  # type: ignore[no-untyped-call]
    assert first, "the watch delivered nothing before the restart"

    # The server goes away mid-run and comes back on the same port; the agent keeps reporting.
    assert stack.servers[0].stop() == 0, "SIGTERM must shut the server down cleanly"
    stack.servers.clear()
    stack.start_server(port=stack.port)
    with stack.channel() as channel:
        stubs = Stubs(channel)
        rest = watch_all(stubs, run_id, cursor=first[-1].cursor)
        whole = watch_all(stubs, run_id)

    resumed = [u.cursor for u in first] + [u.cursor for u in rest]
    assert resumed == [u.cursor for u in whole], "resume must equal one uninterrupted watch"
    assert len(set(resumed)) == len(resumed)
    texts = [ln.text for u in first + rest if u.HasField("logs") for ln in u.logs.lines]
    assert [t for t in texts if t.startswith("line")] == [f"line {i}" for i in range(40)]
    assert rest[-1].status.final


def test_a_cursor_that_is_not_ours_is_invalid(stack: Stack) -> None:
    stack.start_server()
    with stack.channel() as channel:
        stubs = Stubs(channel)
        run_id = create(stubs, manifest("true")).experiment.runs[0].id
        with pytest.raises(grpc.RpcError) as err:
            watch_all(stubs, run_id, cursor="banana")
    assert code_of(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "cursor" in details(err.value)
