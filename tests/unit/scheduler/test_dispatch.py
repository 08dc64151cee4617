"""Lost dispatch: the leader re-sends work its live agent has not taken, and only that."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from runyard.server.queries.scheduling import Holding
from runyard.server.scheduler.scheduler import REDISPATCH_AFTER_S, Scheduler
from runyard.v1 import agent_pb2, common_pb2

RS = common_pb2.RunState


class FakeJetStream:
    def __init__(self) -> None:
        self.sent: list[tuple[str, agent_pb2.WorkAssignment, str]] = []

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        self.sent.append((subject, agent_pb2.WorkAssignment.FromString(data), headers["Nats-Msg-Id"]))


def scheduler() -> tuple[Scheduler, FakeJetStream]:
    ctx: Any = SimpleNamespace(
        config=SimpleNamespace(agent_timeout_s=15.0, attempt_lease_s=60.0), store=SimpleNamespace(engine=None)
    )
    js = FakeJetStream()
    s = Scheduler(ctx, js, None, lease=None, bus=None)  # type: ignore[arg-type]
    s.reads.specs = lambda ids: {i: ("exp-1", common_pb2.RunSpec(command="true")) for i in ids}  # type: ignore[method-assign,assignment]
    s.reads.resume_points = lambda runs: {}  # type: ignore[method-assign,assignment]
    return s, js


def assigned(run_id: str, agent_id: str = "a1", cancel: bool = False) -> Holding:
    return Holding(run_id, "exp-1", "acct", agent_id, ("GPU-a1-0",), 1, 1, RS.RUN_STATE_ASSIGNED, cancel)


def beat(agent_id: str, *attempts: str) -> agent_pb2.AgentHeartbeat:
    return agent_pb2.AgentHeartbeat(agent_id=agent_id, attempts=list(attempts))


def test_work_a_live_agent_has_not_taken_is_sent_again_under_a_new_message_id() -> None:
    s, js = scheduler()
    held = [
        assigned("lost"),
        assigned("taken"),
        assigned("fresh"),
        assigned("silent", "a2"),
        assigned("gone", cancel=True),
    ]
    asyncio.run(s._check_dispatches(held))
    assert js.sent == [], "work first seen is only watched"

    long_ago = time.monotonic() - REDISPATCH_AFTER_S - 5
    for run_id in ("lost", "taken", "silent", "gone"):
        s._dispatched[(run_id, 1)] = (long_ago, 1)
    s.heartbeats.record(beat("a1", "taken:1"))  # a2 never beats: it may be dead, nothing to send it
    asyncio.run(s._check_dispatches(held))

    assert [(subject, w.run_id, w.attempt, list(w.gpu_ids), msg_id) for subject, w, msg_id in js.sent] == [
        ("runyard.work.a1", "lost", 1, ["GPU-a1-0"], "lost:1:resend-1")
    ]
    # Right after a re-send it waits again before the next one.
    asyncio.run(s._check_dispatches(held))
    assert len(js.sent) == 1


def test_runs_that_left_assigned_are_forgotten() -> None:
    s, _ = scheduler()
    asyncio.run(s._check_dispatches([assigned("r")]))
    assert ("r", 1) in s._dispatched
    running = Holding("r", "exp-1", "acct", "a1", ("GPU-a1-0",), 1, 1, RS.RUN_STATE_RUNNING, False)
    asyncio.run(s._check_dispatches([running]))
    assert s._dispatched == {}
