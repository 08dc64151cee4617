"""A fresh installation's first account and keys (`runyard server --bootstrap-keys FILE`).

Every RPC needs an API key and only an admin key can create keys, so somebody
has to create the first one. On a log without any account the server creates
account "default", one admin key and one agent key, and
writes them to FILE as YAML (``account_id``, ``admin_key``, ``agent_key``; the agent
key is bound to one agent id, `--bootstrap-agent-id`, by default the host name),
readable by its owner only. That is how `runyard up` needs no setup.

Several replicas may start at once against an empty database: the create is
one transaction that expects the account stream not to exist, so exactly one
replica commits; the others roll back whole and leave FILE alone. The winner
writes the secrets to a private temporary file before its transaction commits
and renames it into place after, so the keys never become valid without having
been written down somewhere (after a crash between commit and rename they are
in ``.FILE.<pid>.<thread>.tmp`` beside FILE).

Once any account exists, FILE is left as it is: secrets are shown once and
cannot be written again.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import structlog
import yaml

from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import BootstrapFirstAccount, FirstKeys
from runyard.server.queries.accounts import AccountQueries

log = structlog.get_logger(__name__)

FIRST_ACCOUNT = "default"


def write_private(path: Path, text: str) -> None:
    """Create `path` with mode 0600 from the first byte (never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)


def keys_yaml(keys: FirstKeys) -> str:
    return yaml.safe_dump(
        {"account_id": keys.account_id, "admin_key": keys.admin_key, "agent_key": keys.agent_key}, sort_keys=False
    )


def ensure_first_account(
    bus: MessageBus,
    accounts: AccountQueries,
    path: Path,
    gpu_quota: int,
    agent_id: str = "agent",
    storage_prefixes: Sequence[str] = (),
) -> bool:
    """Create the first account and write its keys to `path`; False when accounts exist already.

    `storage_prefixes` are what it may read and write (`--bootstrap-storage`); none means its
    own bucket, s3://default/.
    """
    if accounts.count_accounts() > 0:
        log.info("accounts exist; bootstrap keys file left as it is", path=str(path))
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per replica (process and thread): a losing replica removes only its own staging file.
    staging = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")

    def stage(keys: FirstKeys) -> None:
        write_private(staging, keys_yaml(keys))

    try:
        created = bus.execute(
            BootstrapFirstAccount(
                FIRST_ACCOUNT, gpu_quota, staged=stage, agent=agent_id, storage_prefixes=tuple(storage_prefixes)
            )
        )
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        raise
    if created is None:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        log.info("another replica created the first account; bootstrap keys file left as it is", path=str(path))
        return False
    os.replace(staging, path)
    log.info("created account default with an admin and an agent key", path=str(path), gpu_quota=gpu_quota)
    return True
