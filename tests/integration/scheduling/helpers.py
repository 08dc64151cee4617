"""Accounts, submissions and the event log, for the scheduling tests.

Everything these tests assert about who held which GPUs when is read from the
event log itself (`attempts`), never from a read model.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import grpc

from runyard.client.auth import with_api_key
from runyard.server.domain.events import decode
from runyard.server.store import EventStore
from runyard.v1 import admin_service_pb2, common_pb2, events_pb2, experiment_service_pb2, resources_pb2
from tests.integration.billing.ledger import ENDINGS
from tests.support.stack import Stack, Stubs

T = TypeVar("T")
RS = common_pb2.RunState


def wait_until(what: str, check: Callable[[], T | None], timeout: float = 60.0, stack: Stack | None = None) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            logs = f"\n{stack.logs()}" if stack is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{logs}")
        time.sleep(0.1)


#: The buckets the scheduling tests' manifests name, granted to the accounts they create.
TEST_STORAGE = ("s3://datasets/", "s3://results/")


def create_account(admin: Stubs, account_id: str, gpu_quota: int) -> str:
    """A new account with a plan and the tests' buckets; returns a user key of it."""
    admin.admin.CreateAccount(
        admin_service_pb2.CreateAccountRequest(
            account_id=account_id, name=account_id, gpu_quota=gpu_quota, storage_prefixes=TEST_STORAGE
        ),
        timeout=10,
    )
    reply = admin.admin.CreateApiKey(
        admin_service_pb2.CreateApiKeyRequest(account_id=account_id, role=common_pb2.ROLE_USER, name="test"),
        timeout=10,
    )
    return reply.secret


def stubs_at(endpoint: str, key: str) -> tuple[grpc.Channel, Stubs]:
    channel = with_api_key(grpc.insecure_channel(endpoint), key)
    return channel, Stubs(channel)


def start_gpu_agents(stack: Stack, admin: Stubs, inventory: dict[str, str]) -> None:
    """Agents as separate processes with declared GPUs ({"a1": "2xH100"}); waits until each registered them."""
    for agent_id, gpus in inventory.items():
        count = sum(int(part.split("x")[0]) for part in gpus.split(","))
        stack.start_agent(agent_id, count, "--gpus", gpus)

    def registered() -> bool:
        agents = admin.admin.ListAgents(admin_service_pb2.ListAgentsRequest(), timeout=10).agents
        return {a.id for a in agents if a.alive and a.gpus} >= set(inventory)

    wait_until("the agents to register their GPUs", registered, stack=stack)


def manifest(name: str, command: str, gpus: int = 1, runs: int = 1, extra: str = "", gpu_model: str = "") -> str:
    model = f", gpu_model: {gpu_model}" if gpu_model else ""
    text = textwrap.dedent(
        f"""\
        name: {name}
        framework: {{name: python}}
        command: {json.dumps(command)}
        results: s3://results/{name}
        resources: {{gpus: {gpus}{model}}}
        """
    )
    if runs > 1:
        text += f"hyperparameters:\n  i: {{type: int, min: 1, max: {runs}}}\nsearch: {{method: grid}}\n"
    return text + textwrap.dedent(extra)


def submit(stubs: Stubs, manifest_yaml: str) -> resources_pb2.Experiment:
    return stubs.experiments.CreateExperiment(
        experiment_service_pb2.CreateExperimentRequest(manifest_yaml=manifest_yaml), timeout=30
    ).experiment


def experiment(stubs: Stubs, experiment_id: str) -> resources_pb2.Experiment:
    return stubs.experiments.GetExperiment(
        experiment_service_pb2.GetExperimentRequest(experiment_id=experiment_id), timeout=10
    ).experiment


def all_ended(stubs: Stubs, experiment_ids: Iterable[str]) -> bool:
    return all(experiment(stubs, e).state != resources_pb2.EXPERIMENT_STATE_ACTIVE for e in experiment_ids)


# -- the event log ------------------------------------------------------------------


@dataclass
class Attempt:
    """One attempt that held GPUs, from its RunAssigned to the event that ended it (log positions and times)."""

    run_id: str
    attempt: int
    experiment_id: str
    account_id: str
    index: int
    agent_id: str
    gpu_ids: tuple[str, ...]
    gpus: int
    start: int
    started_at: datetime
    end: int | None = None
    ended_at: datetime | None = None
    outcome: str = ""


def attempts(database_url: str) -> list[Attempt]:
    """Every attempt in the log, in the order it was assigned."""
    store = EventStore.open(database_url, migrate=False, pool_size=1, max_overflow=0)
    try:
        created: dict[str, events_pb2.RunCreated] = {}
        found: dict[tuple[str, int], Attempt] = {}
        after = 0
        while batch := store.read_all(after, 1000):
            for e in batch:
                after = e.position
                if not e.stream_id.startswith("run:"):
                    continue
                msg = decode(e.type, e.data)
                run_id = e.stream_id.removeprefix("run:")
                if isinstance(msg, events_pb2.RunCreated):
                    created[run_id] = msg
                elif isinstance(msg, events_pb2.RunAssigned):
                    c = created[run_id]
                    key = (run_id, msg.attempt)
                    assert key not in found, f"attempt {key} assigned twice"
                    found[key] = Attempt(
                        run_id,
                        msg.attempt,
                        c.experiment_id,
                        c.account_id,
                        c.index,
                        msg.agent_id,
                        tuple(msg.gpu_ids),
                        c.spec.resources.gpus,
                        e.position,
                        e.recorded_at,
                    )
                elif isinstance(msg, ENDINGS) and (run_id, msg.attempt) in found:
                    a = found[(run_id, msg.attempt)]
                    if a.end is None:
                        a.end, a.ended_at, a.outcome = e.position, e.recorded_at, type(msg).__name__
        return sorted(found.values(), key=lambda a: a.start)
    finally:
        store.close()


def peak_gpus_by_account(held: Sequence[Attempt]) -> dict[str, int]:
    """The most GPUs each account held at once, sweeping the log in order."""
    moves: list[tuple[int, str, int]] = []
    for a in held:
        moves.append((a.start, a.account_id, a.gpus))
        if a.end is not None:
            moves.append((a.end, a.account_id, -a.gpus))
    now: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    for _, account, delta in sorted(moves):
        now[account] += delta
        peak[account] = max(peak[account], now[account])
    return dict(peak)


def overlapping(a: Attempt, b: Attempt) -> bool:
    a_end = a.end if a.end is not None else 1 << 62
    b_end = b.end if b.end is not None else 1 << 62
    return a.start < b_end and b.start < a_end
