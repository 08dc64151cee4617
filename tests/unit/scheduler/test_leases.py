"""Attempt leases: the leader ends an attempt only once no heartbeat has listed it for a whole lease.

Pure: fake commands and a fake JetStream; the clock is moved by back-dating what the scheduler knows.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from runyard.server.app.commands import DeclareAgentLost, ExpireAttempt
from runyard.server.queries.scheduling import Holding
from runyard.server.scheduler.scheduler import Scheduler
from runyard.v1 import agent_pb2, common_pb2

RS = common_pb2.RunState
LEASE_S = 60.0
TIMEOUT_S = 15.0


class FakeCommands:
    """Takes the commands the scheduler sends to the application's bus."""

    def __init__(self) -> None:
        self.lost: list[str] = []
        self.expired: list[tuple[str, str, int]] = []

    async def handle(self, command: object) -> int:
        if isinstance(command, DeclareAgentLost):
            assert command.run_ids == [], "a silent agent's attempts end with their leases, not with the agent"
            self.lost.append(command.agent_id)
            return 1
        assert isinstance(command, ExpireAttempt)
        self.expired.append((command.agent_id, command.run_id, command.attempt))
        return 2


class FakeJetStream:
    def __init__(self) -> None:
        self.controls: list[tuple[str, agent_pb2.AgentControl]] = []

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        self.controls.append((subject, agent_pb2.AgentControl.FromString(data)))


def scheduler() -> tuple[Scheduler, FakeCommands, FakeJetStream]:
    commands = FakeCommands()
    ctx: Any = SimpleNamespace(
        config=SimpleNamespace(agent_timeout_s=TIMEOUT_S, attempt_lease_s=LEASE_S),
        store=SimpleNamespace(engine=None),
        projections=SimpleNamespace(wait_for=lambda position, timeout: None),
    )
    js = FakeJetStream()
    s = Scheduler(ctx, js, None, lease=None, bus=commands)  # type: ignore[arg-type]
    return s, commands, js


def held(run_id: str, state: int, agent_id: str = "a1", attempt: int = 1) -> Holding:
    return Holding(run_id, "exp-1", "acct", agent_id, ("GPU-0",), 1, attempt, state, False)


def listening_since(s: Scheduler, seconds_ago: float) -> None:
    """As if this replica had led and listened for that long."""
    s._leading_since = time.monotonic() - seconds_ago
    s.heartbeats._since = time.monotonic() - seconds_ago


def beat(s: Scheduler, agent_id: str, *attempts: str, seconds_ago: float = 0.0) -> None:
    s.heartbeats.record(agent_pb2.AgentHeartbeat(agent_id=agent_id, attempts=list(attempts)))
    if seconds_ago:
        at = time.monotonic() - seconds_ago
        s.heartbeats._seen[agent_id] = at
        for key in attempts:
            s.heartbeats._listed[agent_id][key] = at


def test_every_holding_state_keeps_its_attempt_only_while_heartbeats_list_it() -> None:
    s, commands, js = scheduler()
    listening_since(s, 3 * LEASE_S)
    states = [RS.RUN_STATE_ASSIGNED, RS.RUN_STATE_STAGING, RS.RUN_STATE_RUNNING, RS.RUN_STATE_UPLOADING]
    holding = [held(f"listed-{i}", st) for i, st in enumerate(states)] + [
        held(f"unlisted-{i}", st) for i, st in enumerate(states)
    ]
    # The agent is alive and heartbeats, but lists only the first four: it no longer has the others.
    beat(s, "a1", *(f"listed-{i}:1" for i in range(4)))
    beat(s, "a1", "unlisted-0:1", "unlisted-1:1", "unlisted-2:1", "unlisted-3:1", seconds_ago=LEASE_S + 1)
    beat(s, "a1", *(f"listed-{i}:1" for i in range(4)))

    assert asyncio.run(s._handle_lost_agents(holding))
    assert sorted(commands.expired) == [("a1", f"unlisted-{i}", 1) for i in range(4)]
    assert commands.lost == [], "an agent that heartbeats is not lost"
    # And the agent is told to stop them, should it have them after all.
    assert sorted(c.cancel.run_id for _, c in js.controls) == [f"unlisted-{i}" for i in range(4)]


def test_a_silent_agent_is_lost_at_its_timeout_but_its_attempts_only_at_the_end_of_their_lease() -> None:
    s, commands, _ = scheduler()
    listening_since(s, 3 * LEASE_S)
    holding = [held("r1", RS.RUN_STATE_RUNNING), held("r2", RS.RUN_STATE_UPLOADING)]
    beat(s, "a1", "r1:1", "r2:1", seconds_ago=TIMEOUT_S + 1)

    assert asyncio.run(s._handle_lost_agents(holding))
    assert (commands.lost, commands.expired) == (["a1"], [])
    # Declared once, not at every cycle.
    assert not asyncio.run(s._handle_lost_agents(holding))
    assert commands.lost == ["a1"]

    beat(s, "a1", "r1:1", "r2:1", seconds_ago=LEASE_S + 1)
    assert asyncio.run(s._handle_lost_agents(holding))
    assert sorted(commands.expired) == [("a1", "r1", 1), ("a1", "r2", 1)]


def test_no_lease_ends_before_this_replica_has_listened_a_whole_lease() -> None:
    """A new leader (or one whose NATS link just came back) may have missed the heartbeats: it waits."""
    s, commands, _ = scheduler()
    listening_since(s, LEASE_S - 5)
    holding = [held("r1", RS.RUN_STATE_RUNNING, agent_id="never-heard-of")]
    asyncio.run(s._handle_lost_agents(holding))
    assert commands.expired == []

    s.heartbeats._since = time.monotonic() - 3 * LEASE_S
    s._leading_since = time.monotonic() - 3 * LEASE_S
    s.heartbeats.restart_watch()  # our NATS connection came back just now
    asyncio.run(s._handle_lost_agents(holding))
    assert commands.expired == []


def test_a_dispatch_renews_the_lease_of_work_not_yet_listed() -> None:
    s, commands, _ = scheduler()
    listening_since(s, 3 * LEASE_S)
    s._sent_at[("r1", 2)] = time.monotonic() - 1  # just (re)sent: the agent may not have taken it yet
    holding = [held("r1", RS.RUN_STATE_ASSIGNED, attempt=2)]
    beat(s, "a1")
    asyncio.run(s._handle_lost_agents(holding))
    assert commands.expired == []
    s._sent_at[("r1", 2)] = time.monotonic() - LEASE_S - 1
    asyncio.run(s._handle_lost_agents(holding))
    assert commands.expired == [("a1", "r1", 2)]


def test_an_attempt_neither_sent_nor_listed_here_is_watched_from_when_it_is_first_seen() -> None:
    """Work another leader sent: its lease runs from when this leader first saw it, never from before."""
    s, commands, _ = scheduler()
    listening_since(s, 3 * LEASE_S)
    holding = [held("r1", RS.RUN_STATE_RUNNING, agent_id="a2")]
    asyncio.run(s._handle_lost_agents(holding))
    assert commands.expired == []
    s._sent_at[("r1", 1)] -= LEASE_S + 1  # a lease later, still never listed
    asyncio.run(s._handle_lost_agents(holding))
    assert commands.expired == [("a2", "r1", 1)]
