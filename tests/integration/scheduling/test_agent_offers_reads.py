"""An agent's runtime and framework offers in the read models (SQLite and PostgreSQL), and old events replayed."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import ApplyAgentReport
from runyard.server.domain.scheduling import FrameworkOffer
from runyard.server.projections import schema
from runyard.server.projections.runner import ProjectionRunner
from runyard.server.queries.resources import Queries
from runyard.server.queries.scheduling import SchedulingReads
from runyard.server.store import EventStore
from runyard.v1 import agent_pb2, common_pb2, events_pb2

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "ef" * 32


def register(bus: MessageBus, agent_id: str, event_id: str, **fields: object) -> None:
    registered = events_pb2.AgentRegistered(agent_id=agent_id, hostname="h", slots=1, **fields)  # type: ignore[arg-type]
    bus.execute(ApplyAgentReport(agent_pb2.AgentReport(event_id=event_id, agent_id=agent_id, registered=registered)))


def test_runtime_and_digests_are_read_back_and_an_older_agents_registration_runs_processes(store: EventStore) -> None:
    bus = MessageBus(store)
    projections = ProjectionRunner(store)
    register(
        bus,
        "ctr-1",
        "reg-1",
        frameworks=[common_pb2.Framework(name="pytorch", version="2.13", digest=DIGEST)],
        runtime="container",
    )
    # As an agent from before runtimes and versions were registered sent it.
    register(bus, "old-1", "reg-2", frameworks=[common_pb2.Framework(name="python")])
    # A runtime nobody knows is stored as a process agent's (the column is bounded; only containers run images).
    register(bus, "odd-1", "reg-3", runtime="x" * 500)
    projections.catch_up()

    agents = {a.id: a for a in Queries(store.read_engine).list_agents()}
    assert (agents["ctr-1"].runtime, list(agents["ctr-1"].frameworks)) == (
        "container",
        [common_pb2.Framework(name="pytorch", version="2.13", digest=DIGEST)],
    )
    assert (agents["old-1"].runtime, list(agents["old-1"].frameworks)) == (
        "process",
        [common_pb2.Framework(name="python")],
    )
    assert agents["odd-1"].runtime == "process"

    states = {a.agent_id: a for a in SchedulingReads(store.engine).registered_agents()}
    assert states["ctr-1"].runtime == "container"
    assert states["ctr-1"].frameworks == frozenset({FrameworkOffer("pytorch", "2.13")})
    assert states["old-1"].runtime == "process" and states["old-1"].frameworks == frozenset({FrameworkOffer("python")})

    # A row written before digests were stored ([name, version] pairs) still reads.
    with store.engine.begin() as conn:
        conn.execute(
            update(schema.agents).where(schema.agents.c.id == "old-1").values(frameworks='[["pytorch", "2.12"]]')
        )
    [pairs] = Queries(store.read_engine).list_agents("old-1")
    assert list(pairs.frameworks) == [common_pb2.Framework(name="pytorch", version="2.12")]
    states = {a.agent_id: a for a in SchedulingReads(store.engine).registered_agents()}
    assert states["old-1"].frameworks == frozenset({FrameworkOffer("pytorch", "2.12")})

    # A rebuild replays the same events into the same rows.
    projections.rebuild()
    rebuilt = {a.id: a for a in Queries(store.read_engine).list_agents()}
    assert rebuilt["ctr-1"].runtime == "container" and rebuilt["ctr-1"].frameworks[0].digest == DIGEST
    assert rebuilt["old-1"].runtime == "process"
