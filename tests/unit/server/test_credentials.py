"""The key lookup behind every call and report: cached briefly, revocation wins, rebuilds do not lock out."""

from __future__ import annotations

from runyard.server.credentials import Credentials, Principal, may_report_as
from runyard.server.domain.account import hash_secret
from runyard.server.queries.accounts import KeyRecord
from runyard.v1 import common_pb2


class Table:
    """The api_keys read model as the lookup sees it, with a count of queries."""

    def __init__(self) -> None:
        self.rows: dict[str, KeyRecord] = {}
        self.queries = 0

    def add(self, secret: str, role: int = common_pb2.ROLE_USER, agent_id: str = "") -> None:
        self.rows[hash_secret(secret)] = KeyRecord("key-1", "acme", role, agent_id, False)

    def revoke(self, secret: str) -> None:
        row = self.rows[hash_secret(secret)]
        self.rows[hash_secret(secret)] = KeyRecord(row.key_id, row.account_id, row.role, row.agent_id, True)

    def lookup(self, digest: str) -> KeyRecord | None:
        self.queries += 1
        return self.rows.get(digest)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def setup() -> tuple[Table, Clock, Credentials]:
    table, clock = Table(), Clock()
    return table, clock, Credentials(table.lookup, ttl_s=2.0, grace_s=60.0, clock=clock)


def test_a_known_key_names_its_account_and_is_cached_for_the_ttl() -> None:
    table, clock, creds = setup()
    table.add("ry_a")
    assert creds.cached("ry_a") == (False, None)
    assert creds.principal("ry_a") == Principal("acme", common_pb2.ROLE_USER, "key-1", "")
    assert creds.cached("ry_a") == (True, Principal("acme", common_pb2.ROLE_USER, "key-1", ""))
    creds.principal("ry_a")
    assert table.queries == 1
    clock.now += 2.5
    assert creds.cached("ry_a") == (False, None)
    creds.principal("ry_a")
    assert table.queries == 2


def test_unknown_and_empty_secrets_have_no_principal() -> None:
    _table, _clock, creds = setup()
    assert creds.principal("ry_nobody") is None
    assert creds.principal("") is None
    assert creds.cached("ry_nobody") == (True, None)


def test_a_revocation_takes_effect_once_the_ttl_has_passed() -> None:
    table, clock, creds = setup()
    table.add("ry_a")
    assert creds.principal("ry_a") is not None
    table.revoke("ry_a")
    clock.now += 2.1
    assert creds.principal("ry_a") is None
    clock.now += 100
    assert creds.principal("ry_a") is None


def test_a_row_missing_during_a_rebuild_is_not_a_revocation_but_only_for_the_grace() -> None:
    table, clock, creds = setup()
    table.add("ry_a")
    assert creds.principal("ry_a") is not None
    saved, table.rows = table.rows, {}
    clock.now += 10
    assert creds.principal("ry_a") is not None, "a rebuild must not lock a working key out"
    clock.now += 60
    assert creds.principal("ry_a") is None, "a key gone for good stops working after the grace"
    table.rows = saved
    clock.now += 3
    assert creds.principal("ry_a") is not None


def test_a_key_never_seen_valid_gets_no_grace() -> None:
    table, clock, creds = setup()
    table.add("ry_a")
    table.revoke("ry_a")
    assert creds.principal("ry_a") is None
    table.rows = {}
    clock.now += 3
    assert creds.principal("ry_a") is None


def test_only_agent_keys_bound_to_that_agent_may_report() -> None:
    any_agent = Principal("acme", common_pb2.ROLE_AGENT, "k", "")
    one_agent = Principal("acme", common_pb2.ROLE_AGENT, "k", "gpu-1")
    admin = Principal("acme", common_pb2.ROLE_ADMIN, "k", "")
    # A key bound to no agent speaks for none (it used to speak for every agent).
    assert not may_report_as(any_agent, "gpu-7") and not may_report_as(any_agent, "")
    assert may_report_as(one_agent, "gpu-1") and not may_report_as(one_agent, "gpu-2")
    assert not may_report_as(admin, "gpu-1")
    assert not may_report_as(None, "gpu-1")
