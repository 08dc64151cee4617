"""Handlers of the account and API key use cases, and the first account of a fresh installation."""

from __future__ import annotations

import secrets
from typing import NamedTuple

from runyard.server.app import commands as c
from runyard.server.app.aggregates import ACCOUNT, API_KEY, change
from runyard.server.app.errors import AlreadyExists, NotFound
from runyard.server.app.unit_of_work import UnitOfWork
from runyard.server.domain.account import Account, ApiKey, account_stream, api_key_stream, hash_secret
from runyard.server.store import NO_STREAM, ConcurrencyError
from runyard.v1 import common_pb2

#: Every API key secret starts with this, so a leaked one is easy to spot (secret scanners, logs).
SECRET_PREFIX = "ry_"


def new_secret() -> str:
    """A bearer secret: 256 random bits, URL-safe; only its SHA-256 is ever stored."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key-" + secrets.token_hex(6)


class CreatedKey(NamedTuple):
    """A new API key: its id, its secret (shown once, never stored) and the log position."""

    key_id: str
    secret: str
    position: int


def create_account(cmd: c.CreateAccount, uow: UnitOfWork) -> int:
    """Open an account; the stream must not exist, so a taken id is AlreadyExists, never a merge."""
    new = Account.create(
        cmd.account_id, cmd.name, cmd.gpu_quota, cmd.max_queued_runs, cmd.run_quota, cmd.storage_prefixes
    )
    try:
        return uow.append(account_stream(cmd.account_id), new, NO_STREAM).last_position
    except ConcurrencyError:
        raise AlreadyExists("account", cmd.account_id) from None


def set_quota(cmd: c.SetQuota, uow: UnitOfWork) -> int:
    """Change an account's plan; returns the position (0 when the plan was already that)."""
    return change(
        uow, ACCOUNT, cmd.account_id, lambda a: a.set_quota(cmd.gpu_quota, cmd.max_queued_runs, cmd.run_quota)
    ).position


def set_account_preemption(cmd: c.SetAccountPreemption, uow: UnitOfWork) -> int:
    """Allow or forbid preempting the account's runs; returns the position (0 when nothing changed)."""
    return change(uow, ACCOUNT, cmd.account_id, lambda a: a.set_preemption(cmd.preemptible)).position


def set_account_storage(cmd: c.SetAccountStorage, uow: UnitOfWork) -> int:
    """Grant and revoke an account's storage prefixes; returns the position (0 when nothing changed)."""
    return change(uow, ACCOUNT, cmd.account_id, lambda a: a.set_storage(cmd.allow, cmd.revoke)).position


def create_api_key(cmd: c.CreateApiKey, uow: UnitOfWork) -> CreatedKey:
    """A new key of an existing account; the secret is returned here and nowhere else, ever."""
    if not uow.exists(account_stream(cmd.account_id)):
        raise NotFound("account", cmd.account_id)
    secret = new_secret()
    key_id = new_key_id()
    new = ApiKey.create(
        key_id, cmd.account_id, cmd.role, hash_secret(secret), cmd.name, cmd.agent_id, cmd.nats_public_key
    )
    position = uow.append(api_key_stream(key_id), new, NO_STREAM).last_position
    return CreatedKey(key_id, secret, position)


def revoke_api_key(cmd: c.RevokeApiKey, uow: UnitOfWork) -> int:
    """Disable a key; returns the position (0 when it was revoked already)."""
    return change(uow, API_KEY, cmd.key_id, lambda key: key.revoke(cmd.reason)).position


def bootstrap_first_account(cmd: c.BootstrapFirstAccount, uow: UnitOfWork) -> c.FirstKeys | None:
    """Create the first account with an admin key and an agent key, or None if another replica did.

    Everything goes in one transaction whose account append expects NO_STREAM: of
    several replicas starting together exactly one commits, the others roll back
    whole (their keys included).
    """
    account_id = cmd.account_id
    admin_key, agent_key = new_secret(), new_secret()
    admin_id, agent_id = new_key_id(), new_key_id()
    account = Account.create(account_id, account_id, cmd.gpu_quota, 0, cmd.run_quota, cmd.storage_prefixes)
    admin = ApiKey.create(admin_id, account_id, common_pb2.ROLE_ADMIN, hash_secret(admin_key), "bootstrap admin")
    # Bound to one agent id (`runyard server --bootstrap-agent-id`, default the host name).
    agent_key_events = ApiKey.create(
        agent_id, account_id, common_pb2.ROLE_AGENT, hash_secret(agent_key), f"bootstrap agent {cmd.agent}", cmd.agent
    )
    try:
        with uow.transaction() as tx:
            tx.append(account_stream(account_id), account, NO_STREAM)
            tx.append(api_key_stream(admin_id), admin, NO_STREAM)
            position = tx.append(api_key_stream(agent_id), agent_key_events, NO_STREAM).last_position
            keys = c.FirstKeys(account_id, admin_key, agent_key, position)
            if cmd.staged is not None:
                cmd.staged(keys)
    except ConcurrencyError:
        return None
    return keys
