"""Where each aggregate lives in the log and how it is replayed: one generic load and change for all.

`load(uow, RUN, run_id)` replaces a load method per aggregate; `change`
(`runyard.server.app.unit_of_work.change`) is the one optimistic-retry loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic

from google.protobuf.message import Message

from runyard.server.app import unit_of_work
from runyard.server.app.unit_of_work import A, Outcome, UnitOfWork
from runyard.server.domain import events as ev
from runyard.server.domain.account import Account, ApiKey, account_stream, api_key_stream
from runyard.server.domain.experiment import Experiment
from runyard.server.domain.run import Run
from runyard.v1 import events_pb2


@dataclass
class AgentDrain:
    """An agent's stream as far as draining goes: whether new runs are kept from it."""

    agent_id: str = ""
    draining: bool = False
    version: int = 0

    @classmethod
    def replay(cls, events: Iterable[Message]) -> AgentDrain:
        agent = cls()
        for event in events:
            if isinstance(event, events_pb2.AgentRegistered) and event.agent_id:
                agent.agent_id = event.agent_id
            elif isinstance(event, events_pb2.AgentDrainRequested):
                agent.draining = True
            elif isinstance(event, events_pb2.AgentDrainCleared):
                agent.draining = False
            agent.version += 1
        return agent


@dataclass(frozen=True)
class Kind(Generic[A]):
    """An aggregate type: its name in messages ("run r-1 not found"), its stream, its replay."""

    name: str
    stream: Callable[[str], str]
    replay: Callable[[Iterable[Message]], A]
    #: The correlation id its new events carry (the experiment they belong to).
    correlation: Callable[[A], str | None] = lambda _: None


RUN: Kind[Run] = Kind("run", ev.run_stream, Run.replay, lambda run: run.experiment_id)
EXPERIMENT: Kind[Experiment] = Kind(
    "experiment", ev.experiment_stream, Experiment.replay, lambda experiment: experiment.experiment_id
)
ACCOUNT: Kind[Account] = Kind("account", account_stream, Account.replay)
API_KEY: Kind[ApiKey] = Kind("API key", api_key_stream, ApiKey.replay)
AGENT: Kind[AgentDrain] = Kind("agent", ev.agent_stream, AgentDrain.replay)


def load(uow: UnitOfWork, kind: Kind[A], ident: str) -> A:
    """The aggregate as its stream leaves it; NotFound when the stream is empty."""
    return unit_of_work.load(uow, kind.stream(ident), kind.replay, kind.name, ident)


def change(
    uow: UnitOfWork,
    kind: Kind[A],
    ident: str,
    decide: Callable[[A], list[Message]],
    event_ids: Callable[[int], list[uuid.UUID]] | None = None,
) -> Outcome:
    """Decide on the aggregate's latest state and append, retrying on a concurrent write (Outcome([], 0): nothing)."""
    return unit_of_work.change(
        uow,
        kind.stream(ident),
        kind.replay,
        decide,
        kind=kind.name,
        ident=ident,
        correlation=kind.correlation,
        event_ids=event_ids,
    )
