"""Accounts and their API keys: who may act, on what, with how many GPUs.

An account is a tenant with a plan (its GPU quota and, optionally, caps on
queued and concurrent CPU-only runs); an API key lets one caller act for one
account with one role. Both are aggregates with their own streams
("account:<id>", "api-key:<key id>"), so creating one twice is refused by the
store's NO_STREAM check rather than by a read that might be stale.

Secrets never reach the log: the caller hands the domain the SHA-256 of a key's
secret, and only that hash is stored. Generating the secret (randomness) is the
command layer's job, so the domain stays deterministic and testable.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from runyard.server.domain.errors import DomainError
from runyard.server.domain.storage import canonical_prefixes, default_storage_prefixes, granted_after
from runyard.v1 import common_pb2, events_pb2

#: Account ids appear in stream names, URLs and object keys: keep them plain.
ACCOUNT_ID = re.compile(r"^[a-z0-9-]{1,64}$")
#: Agent ids are NATS subject tokens (see runyard.bus.check_agent_id).
AGENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# A NATS user NKey public key: "U" then 55 base32 characters (the last two hold a checksum).
NKEY_USER = re.compile(r"^U[A-Z2-7]{55}$")
MAX_NAME = 200
#: Far above any real plan; a typo like 80000000 is refused rather than silently granted.
MAX_QUOTA = 1_000_000

RoleValue = common_pb2.Role.ValueType
ROLES: dict[int, str] = {
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ADMIN: "admin",
    common_pb2.ROLE_AGENT: "agent",
}


class InvalidField(DomainError, ValueError):
    """A request field the domain refuses; the message names the field (INVALID_ARGUMENT)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def account_stream(account_id: str) -> str:
    return f"account:{account_id}"


def api_key_stream(key_id: str) -> str:
    return f"api-key:{key_id}"


def hash_secret(secret: str) -> str:
    """The only form of a key's secret that is ever stored or compared."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_account_id(account_id: str, field: str = "account_id") -> str:
    if not ACCOUNT_ID.match(account_id):
        raise InvalidField(field, f"{account_id!r} is not an account id: use 1-64 lowercase letters, digits or '-'")
    return account_id


def role_name(role: int) -> str:
    return ROLES.get(role, "none")


def _check_name(name: str) -> None:
    if len(name) > MAX_NAME:
        raise InvalidField("name", f"is {len(name)} characters long; at most {MAX_NAME}")


def _check_quotas(gpu_quota: int, max_queued_runs: int, run_quota: int) -> None:
    for field, value in (("gpu_quota", gpu_quota), ("max_queued_runs", max_queued_runs), ("run_quota", run_quota)):
        if value < 0 or value > MAX_QUOTA:
            raise InvalidField(field, f"{value} is outside 0..{MAX_QUOTA}")


@dataclass
class Account:
    """An account as its stream says it is; `version` is the number of events applied."""

    account_id: str
    name: str
    gpu_quota: int
    max_queued_runs: int = 0
    run_quota: int = 0
    #: Storage prefixes its manifests may read and write (canonical; see runyard.server.domain.storage).
    storage_prefixes: tuple[str, ...] = ()
    #: Whether the scheduler may preempt the account's runs for other accounts' or higher-priority runs.
    preemptible: bool = True
    version: int = 0

    @staticmethod
    def create(
        account_id: str,
        name: str = "",
        gpu_quota: int = 1,
        max_queued_runs: int = 0,
        run_quota: int = 0,
        storage_prefixes: Sequence[str] = (),
    ) -> list[Message]:
        """Open an account; an empty name becomes the id, so every account reads well in lists.

        No storage prefixes means the default, the account's own bucket (s3://<id>/); the
        event records the prefixes it was given, so a later change of the default changes no
        existing account.
        """
        check_account_id(account_id)
        _check_name(name)
        _check_quotas(gpu_quota, max_queued_runs, run_quota)
        prefixes = canonical_prefixes("storage_prefixes", storage_prefixes or default_storage_prefixes(account_id))
        return [
            events_pb2.AccountCreated(
                account_id=account_id,
                name=name or account_id,
                gpu_quota=gpu_quota,
                max_queued_runs=max_queued_runs,
                run_quota=run_quota,
                storage_prefixes=prefixes,
            )
        ]

    @classmethod
    def replay(cls, events: Iterable[Message]) -> Account:
        stream = iter(events)
        first = next(stream, None)
        if not isinstance(first, events_pb2.AccountCreated):
            opened = "nothing" if first is None else first.DESCRIPTOR.name
            raise DomainError(f"an account stream opens with AccountCreated, not {opened}")
        account = cls(
            account_id=first.account_id,
            name=first.name,
            gpu_quota=first.gpu_quota,
            max_queued_runs=first.max_queued_runs,
            run_quota=first.run_quota,
            # Accounts opened before storage grants existed have none recorded: they get the default.
            storage_prefixes=tuple(first.storage_prefixes) or default_storage_prefixes(first.account_id),
            version=1,
        )
        for event in stream:
            account.apply(event)
        return account

    def apply(self, event: Message) -> None:
        if isinstance(event, events_pb2.AccountQuotaSet):
            self.gpu_quota = event.gpu_quota
            self.max_queued_runs = event.max_queued_runs
            self.run_quota = event.run_quota
        elif isinstance(event, events_pb2.AccountStorageSet):
            self.storage_prefixes = tuple(event.storage_prefixes)
        elif isinstance(event, events_pb2.AccountPreemptionSet):
            self.preemptible = event.preemptible
        else:
            raise DomainError(f"account {self.account_id}: {event.DESCRIPTOR.name} is not an account event here")
        self.version += 1

    def set_storage(self, allow: Iterable[str] = (), revoke: Iterable[str] = ()) -> list[Message]:
        """Grant `allow` and take back `revoke`; the same grants again record nothing (a retry is harmless)."""
        after = granted_after(self.storage_prefixes, allow, revoke)
        if after == tuple(sorted(self.storage_prefixes)):
            return []
        return [events_pb2.AccountStorageSet(storage_prefixes=after)]

    def set_quota(self, gpu_quota: int, max_queued_runs: int = 0, run_quota: int = 0) -> list[Message]:
        """Change the plan; the same plan again records nothing, so a retried call is harmless."""
        _check_quotas(gpu_quota, max_queued_runs, run_quota)
        if (gpu_quota, max_queued_runs, run_quota) == (self.gpu_quota, self.max_queued_runs, self.run_quota):
            return []
        return [events_pb2.AccountQuotaSet(gpu_quota=gpu_quota, max_queued_runs=max_queued_runs, run_quota=run_quota)]

    def set_preemption(self, preemptible: bool) -> list[Message]:
        """Allow or forbid preempting the account's runs; the same policy again records nothing."""
        if preemptible == self.preemptible:
            return []
        return [events_pb2.AccountPreemptionSet(preemptible=preemptible)]


@dataclass
class ApiKey:
    """An API key as its stream says it is: whose it is, what it may do, and whether it still works."""

    key_id: str
    account_id: str
    role: int
    secret_sha256: str
    name: str = ""
    agent_id: str = ""
    revoked: bool = False
    version: int = 0
    # For an agent key: the public NKey of the agent's NATS user (see runyard.natsauth).
    nats_public_key: str = ""

    @staticmethod
    def create(
        key_id: str,
        account_id: str,
        role: int,
        secret_sha256: str,
        name: str = "",
        agent_id: str = "",
        nats_public_key: str = "",
    ) -> list[Message]:
        """A new key of `account_id`; an agent key is bound to exactly one agent id.

        A key for any agent would let one host speak for every other host, so an
        agent key without an agent id is refused.
        """
        if not key_id:
            raise InvalidField("key_id", "is required")
        check_account_id(account_id)
        if role not in ROLES:
            raise InvalidField("role", f"{role} is not a role: use user, admin or agent")
        if not SHA256_HEX.match(secret_sha256):
            raise InvalidField("secret_sha256", "is not a lowercase hex SHA-256 digest")
        _check_name(name)
        if agent_id and role != common_pb2.ROLE_AGENT:
            raise InvalidField("agent_id", f"only an agent key names an agent; this key's role is {role_name(role)}")
        if agent_id and not AGENT_ID.match(agent_id):
            raise InvalidField("agent_id", f"{agent_id!r} is not an agent id: use 1-64 letters, digits, '-' or '_'")
        if role == common_pb2.ROLE_AGENT and not agent_id:
            raise InvalidField("agent_id", "is required for an agent key: the key speaks for that one agent")
        if nats_public_key and role != common_pb2.ROLE_AGENT:
            raise InvalidField("nats_public_key", "only an agent key has a NATS user")
        if nats_public_key and not NKEY_USER.match(nats_public_key):
            raise InvalidField(
                "nats_public_key", "is not a NATS user public NKey (56 characters of base32, starting with U)"
            )
        return [
            events_pb2.ApiKeyCreated(
                key_id=key_id,
                account_id=account_id,
                role=role,  # type: ignore[arg-type]
                secret_sha256=secret_sha256,
                name=name,
                agent_id=agent_id,
                nats_public_key=nats_public_key,
            )
        ]

    @classmethod
    def replay(cls, events: Iterable[Message]) -> ApiKey:
        stream = iter(events)
        first = next(stream, None)
        if not isinstance(first, events_pb2.ApiKeyCreated):
            opened = "nothing" if first is None else first.DESCRIPTOR.name
            raise DomainError(f"an API key stream opens with ApiKeyCreated, not {opened}")
        key = cls(
            key_id=first.key_id,
            account_id=first.account_id,
            role=first.role,
            secret_sha256=first.secret_sha256,
            name=first.name,
            agent_id=first.agent_id,
            nats_public_key=first.nats_public_key,
            version=1,
        )
        for event in stream:
            key.apply(event)
        return key

    def apply(self, event: Message) -> None:
        if not isinstance(event, events_pb2.ApiKeyRevoked):
            raise DomainError(f"API key {self.key_id}: {event.DESCRIPTOR.name} is not an API key event here")
        self.revoked = True
        self.version += 1

    def revoke(self, reason: str = "") -> list[Message]:
        """Disable the key for good; revoking a revoked key records nothing (a retry is harmless)."""
        if self.revoked:
            return []
        return [events_pb2.ApiKeyRevoked(reason=reason)]
