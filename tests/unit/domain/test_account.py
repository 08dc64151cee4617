"""Accounts and API keys: what may be created, how plans change, how keys end."""

from __future__ import annotations

import hashlib

import pytest

from runyard.server.domain.account import (
    Account,
    ApiKey,
    InvalidField,
    account_stream,
    api_key_stream,
    check_account_id,
    hash_secret,
)
from runyard.server.domain.errors import DomainError
from runyard.v1 import common_pb2, events_pb2

SHA = hashlib.sha256(b"ry_secret").hexdigest()


@pytest.mark.parametrize("account_id", ["a", "default", "team-42", "x" * 64, "0-0"])
def test_plain_account_ids_are_accepted(account_id: str) -> None:
    assert check_account_id(account_id) == account_id


@pytest.mark.parametrize("account_id", ["", "Team", "a_b", "a b", "x" * 65, "ünï", "a:b", "a/b"])
def test_other_account_ids_are_refused_naming_the_field(account_id: str) -> None:
    with pytest.raises(InvalidField, match=r"^account_id: ") as err:
        Account.create(account_id, gpu_quota=1)
    assert isinstance(err.value, ValueError), "the API maps ValueError to INVALID_ARGUMENT"


def test_an_account_opens_with_its_plan_and_its_id_as_default_name() -> None:
    (created,) = Account.create("acme", gpu_quota=4, max_queued_runs=10, run_quota=2)
    assert created == events_pb2.AccountCreated(
        account_id="acme", name="acme", gpu_quota=4, max_queued_runs=10, run_quota=2, storage_prefixes=["s3://acme/"]
    )
    account = Account.replay([created])
    assert (account.gpu_quota, account.max_queued_runs, account.run_quota, account.version) == (4, 10, 2, 1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"gpu_quota": -1}, "gpu_quota"),
        ({"gpu_quota": 10**7}, "gpu_quota"),
        ({"max_queued_runs": -5}, "max_queued_runs"),
        ({"run_quota": 10**9}, "run_quota"),
        ({"name": "n" * 201}, "name"),
    ],
)
def test_an_impossible_plan_is_refused_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidField) as err:
        Account.create("acme", **kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_set_quota_changes_the_plan_and_a_repeat_records_nothing() -> None:
    account = Account.replay(Account.create("acme", gpu_quota=1))
    (changed,) = account.set_quota(8, max_queued_runs=3)
    assert changed == events_pb2.AccountQuotaSet(gpu_quota=8, max_queued_runs=3, run_quota=0)
    account.apply(changed)
    assert (account.gpu_quota, account.max_queued_runs, account.version) == (8, 3, 2)
    assert account.set_quota(8, max_queued_runs=3) == []
    with pytest.raises(InvalidField, match="gpu_quota"):
        account.set_quota(-2)


def test_an_account_stream_must_open_with_account_created() -> None:
    with pytest.raises(DomainError, match="opens with AccountCreated"):
        Account.replay([events_pb2.AccountQuotaSet(gpu_quota=1)])
    account = Account.replay(Account.create("acme"))
    with pytest.raises(DomainError):
        account.apply(events_pb2.ApiKeyRevoked())


def test_a_key_stores_only_the_hash_of_its_secret() -> None:
    (created,) = ApiKey.create("key-1", "acme", common_pb2.ROLE_USER, hash_secret("ry_secret"), name="laptop")
    assert isinstance(created, events_pb2.ApiKeyCreated)
    assert created.secret_sha256 == SHA
    assert "ry_secret" not in created.SerializeToString().decode("latin-1")
    key = ApiKey.replay([created])
    assert (key.account_id, key.role, key.revoked, key.version) == ("acme", common_pb2.ROLE_USER, False, 1)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("", "acme", common_pb2.ROLE_USER, SHA, "", ""), "key_id"),
        (("k", "ACME", common_pb2.ROLE_USER, SHA, "", ""), "account_id"),
        (("k", "acme", common_pb2.ROLE_UNSPECIFIED, SHA, "", ""), "role"),
        (("k", "acme", 99, SHA, "", ""), "role"),
        (("k", "acme", common_pb2.ROLE_USER, "not-a-hash", "", ""), "secret_sha256"),
        (("k", "acme", common_pb2.ROLE_USER, SHA, "", "agent-1"), "agent_id"),
        (("k", "acme", common_pb2.ROLE_AGENT, SHA, "", "bad agent"), "agent_id"),
        # An agent key for any agent would let one host speak for all of them.
        (("k", "acme", common_pb2.ROLE_AGENT, SHA, "", ""), "agent_id"),
    ],
)
def test_a_malformed_key_is_refused_naming_the_field(args: tuple[str, str, int, str, str, str], field: str) -> None:
    with pytest.raises(InvalidField) as err:
        ApiKey.create(*args)
    assert err.value.field == field


def test_an_agent_key_may_be_narrowed_to_one_agent() -> None:
    (created,) = ApiKey.create("k", "acme", common_pb2.ROLE_AGENT, SHA, agent_id="gpu-node-7")
    assert isinstance(created, events_pb2.ApiKeyCreated)
    assert created.agent_id == "gpu-node-7"


def test_an_agent_key_records_its_nats_user() -> None:
    public = "U" + "A" * 55
    key = ApiKey.replay(
        ApiKey.create("k", "acme", common_pb2.ROLE_AGENT, SHA, agent_id="gpu-1", nats_public_key=public)
    )
    assert key.nats_public_key == public
    for bad, role in (("SUAXYZ", common_pb2.ROLE_AGENT), (public, common_pb2.ROLE_USER)):
        with pytest.raises(InvalidField) as err:
            ApiKey.create("k", "acme", role, SHA, agent_id="gpu-1" if role == common_pb2.ROLE_AGENT else "",
                          nats_public_key=bad)  # fmt: skip
        assert err.value.field == "nats_public_key"


def test_revoke_ends_a_key_once() -> None:
    key = ApiKey.replay(ApiKey.create("k", "acme", common_pb2.ROLE_ADMIN, SHA))
    (revoked,) = key.revoke("left the team")
    assert revoked == events_pb2.ApiKeyRevoked(reason="left the team")
    key.apply(revoked)
    assert key.revoked and key.version == 2
    assert key.revoke() == []


def test_stream_names() -> None:
    assert account_stream("acme") == "account:acme"
    assert api_key_stream("key-abc") == "api-key:key-abc"
