"""A pause reaches the agent as a graceful cancel (the run's preemption grace, or 60 s, and the reason),
also when a new leader re-sends the stops its predecessor may have lost."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from runyard.server.scheduler.scheduler import DEFAULT_STOP_GRACE_S, Scheduler
from runyard.v1 import agent_pb2, common_pb2, resources_pb2


class Published:
    def __init__(self) -> None:
        self.sent: list[agent_pb2.CancelAttempt] = []

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        self.sent.append(agent_pb2.AgentControl.FromString(data).cancel)


def scheduler(grace: int, pausing: bool) -> tuple[Scheduler, Published]:
    run = resources_pb2.Run(id="r1", agent_id="a1", attempt=2)
    queries = SimpleNamespace(get_run=lambda run_id: run)
    ctx: Any = SimpleNamespace(
        config=SimpleNamespace(agent_timeout_s=15.0, attempt_lease_s=60.0),
        store=SimpleNamespace(engine=None),
        queries=queries,
    )
    aggregate = SimpleNamespace(
        pause_requested=pausing, cancel_requested=not pausing, stop_requested=False, pause_reason="experiment paused"
    )
    bus: Any = SimpleNamespace(load=lambda kind, run_id: aggregate)
    js = Published()
    s = Scheduler(ctx, js, None, lease=None, bus=bus)  # type: ignore[arg-type]
    spec = common_pb2.RunSpec(command="true", preemption_grace_seconds=grace)
    s.reads.specs = lambda ids: {i: ("exp-1", spec) for i in ids}  # type: ignore[method-assign,assignment]
    return s, js


def test_a_graceful_cancel_carries_the_runs_grace_or_the_default() -> None:
    s, js = scheduler(grace=5, pausing=True)
    asyncio.run(s.send_cancel("r1", reason="experiment paused", graceful=True))
    s0, js0 = scheduler(grace=0, pausing=True)
    asyncio.run(s0.send_cancel("r1", reason="experiment paused", graceful=True))
    assert [(c.run_id, c.attempt, c.grace_seconds, c.reason) for c in js.sent + js0.sent] == [
        ("r1", 2, 5, "experiment paused"),
        ("r1", 2, DEFAULT_STOP_GRACE_S, "experiment paused"),
    ]


def test_a_new_leader_resends_a_pause_gracefully_and_a_cancel_plainly() -> None:
    s, js = scheduler(grace=7, pausing=True)
    asyncio.run(s._resend_stop("r1"))
    s2, js2 = scheduler(grace=7, pausing=False)
    asyncio.run(s2._resend_stop("r1"))
    assert [(c.grace_seconds, c.reason) for c in js.sent + js2.sent] == [(7, "experiment paused"), (0, "")]
