"""The first account and keys of a fresh installation: created once, even by replicas starting together."""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import CreateAccount, CreateApiKey, RevokeApiKey, SetQuota
from runyard.server.domain.account import hash_secret
from runyard.server.first_run import ensure_first_account
from runyard.server.projections import schema
from runyard.server.projections.runner import ProjectionRunner
from runyard.server.queries.accounts import AccountQueries
from runyard.server.store import EventStore
from runyard.v1 import common_pb2

pytestmark = pytest.mark.integration

REPLICAS = 4


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_url")
    else:
        yield f"sqlite:///{tmp_path}/first.db"


def test_replicas_starting_together_create_one_account_and_one_keys_file(url: str, tmp_path: Path) -> None:
    stores = [EventStore.open(url) for _ in range(REPLICAS)]
    try:
        keys_file = tmp_path / "keys.yaml"
        barrier = threading.Barrier(REPLICAS)
        won: list[bool] = []
        errors: list[BaseException] = []

        def replica(store: EventStore) -> None:
            try:
                barrier.wait()
                won.append(
                    ensure_first_account(MessageBus(store), AccountQueries(store.read_engine), keys_file, 8, "gpu-0")
                )
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=replica, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert sorted(won) == [False] * (REPLICAS - 1) + [True]
        assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
        assert not list(tmp_path.glob(".keys.yaml.*")), "a loser left its staged secrets behind"
        keys = yaml.safe_load(keys_file.read_text())
        assert set(keys) == {"account_id", "admin_key", "agent_key"} and keys["account_id"] == "default"

        ProjectionRunner(stores[0]).catch_up()
        queries = AccountQueries(stores[0].read_engine)
        accounts = queries.list_accounts()
        assert [(a.id, a.gpu_quota, a.run_quota) for a in accounts] == [("default", 8, 0)]
        admin = queries.key_by_hash(hash_secret(keys["admin_key"]))
        agent = queries.key_by_hash(hash_secret(keys["agent_key"]))
        assert admin is not None and admin.role == common_pb2.ROLE_ADMIN and admin.account_id == "default"
        assert agent is not None and agent.role == common_pb2.ROLE_AGENT and agent.agent_id == "gpu-0"
        assert len(queries.list_api_keys()) == 2

        # A later start leaves the file as it is: the secrets are never written again.
        before = keys_file.read_bytes()
        assert not ensure_first_account(MessageBus(stores[1]), AccountQueries(stores[1].read_engine), keys_file, 8)
        assert keys_file.read_bytes() == before
    finally:
        for s in stores:
            s.close()


def test_accounts_and_keys_read_models_rebuild_to_identical_rows(url: str) -> None:
    store = EventStore.open(url)
    try:
        bus = MessageBus(store)
        bus.execute(CreateAccount("acme", "Acme", gpu_quota=2))
        bus.execute(SetQuota("acme", 4, max_queued_runs=9))
        key = bus.execute(CreateApiKey("acme", common_pb2.ROLE_USER, "laptop"))
        bus.execute(CreateApiKey("acme", common_pb2.ROLE_AGENT, agent_id="gpu-1"))
        bus.execute(RevokeApiKey(key.key_id, "lost laptop"))
        runner = ProjectionRunner(store)
        runner.catch_up()

        def dump() -> list[list[tuple[object, ...]]]:
            with store.engine.connect() as conn:
                return [
                    [tuple(r) for r in conn.execute(select(t).order_by(t.c.id))]
                    for t in (schema.accounts, schema.api_keys)
                ]

        live = dump()
        assert len(live[0]) == 1 and len(live[1]) == 2
        runner.rebuild()
        assert dump() == live
        queries = AccountQueries(store.read_engine)
        revoked = queries.get_api_key(key.key_id)
        assert revoked is not None and revoked.revoked
        account = queries.get_account("acme")
        assert account is not None and (account.gpu_quota, account.max_queued_runs) == (4, 9)
    finally:
        store.close()
