"""`runyard server` and `runyard agent`: settings in, long-running process out.

The server and the agent are imported only here, inside the commands, so the client
commands (and `runyard --help`) never pay for SQLAlchemy, NATS or the training
runtime, and a client-only installation still works.
"""

from __future__ import annotations

import argparse
import re
import socket
from typing import Any, NoReturn

from runyard.client.errors import ClientError
from runyard.config import Settings


def _not_installed(part: str, e: ModuleNotFoundError) -> NoReturn:
    """A missing runyard.server/agent module is an installation gap; any other import error is a bug."""
    if e.name and e.name.startswith(f"runyard.{part}"):
        raise ClientError(f"the Runyard {part} is not part of this installation (no module {e.name})") from None
    raise e


def server_config_kwargs(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """ServerConfig fields that are set somewhere; the rest keep ServerConfig's defaults."""
    fields: dict[str, Any] = {
        "listen": settings.listen,
        "database_url": settings.database_url,
        "nats_url": settings.nats_url,
        "storage_root": settings.storage_root,
        "s3_endpoint_url": settings.s3_endpoint_url,
        "code_uri_prefix": settings.code_uri_prefix,
        "max_code_bytes": settings.max_code_bytes,
        "agent_timeout_s": settings.agent_timeout,
        "attempt_lease_s": settings.attempt_lease,
        "shutdown_grace_s": getattr(args, "shutdown_grace", None),
        "bootstrap_keys_file": settings.bootstrap_keys,
        "default_gpu_quota": settings.default_gpu_quota,
    }
    return {k: v for k, v in fields.items() if v is not None}


def cmd_server(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from runyard.server.config import ServerConfig
        from runyard.server.main import run_server
    except ModuleNotFoundError as e:
        _not_installed("server", e)
    try:
        config = ServerConfig(**server_config_kwargs(settings, args))
    except ValueError as e:  # a setting out of range: say which, no traceback
        raise ClientError(str(e)) from None
    run_server(config)
    return 0


def default_agent_id() -> str:
    """The host name, made safe for NATS subjects and ids: lowercase letters, digits, dashes."""
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")
    return name[:63] or "agent"


def agent_config_kwargs(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "agent_id": settings.agent_id or default_agent_id(),
        "nats_url": settings.nats_url,
        "slots": settings.slots,
        "work_dir": settings.work_dir,
        "storage_root": settings.storage_root,
        "s3_endpoint_url": settings.s3_endpoint_url,
        "frameworks": settings.frameworks,
        "labels": settings.labels,
        "cancel_grace_s": getattr(args, "cancel_grace", None),
        "api_key": settings.api_key,
    }
    if settings.gpus is not None:
        from runyard.agent.gpus import declared_gpus

        try:
            fields["gpus"] = tuple(declared_gpus(settings.gpus, fields["agent_id"]))
        except ValueError as e:
            raise ClientError(str(e)) from None
    return {k: v for k, v in fields.items() if v is not None}


def cmd_agent(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import gc

    try:
        from runyard.agent.config import AgentConfig
        from runyard.agent.main import run_agent
    except ModuleNotFoundError as e:
        _not_installed("agent", e)
    config = AgentConfig(**agent_config_kwargs(settings, args))
    if config.slots is not None and config.slots < 1:
        raise ClientError(f"--slots must be at least 1, got {config.slots}")

    # A busy agent makes a few small objects for every line a run prints (hundreds of thousands a
    # second): keep the start-up heap (protobuf, boto3, tensorboard modules) out of every full
    # collection, and collect the young generation less often: 13-23% less agent CPU in
    # bench/metrics_ingest.py.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    # run_agent stops gracefully on SIGTERM (`runyard down`, Kubernetes, systemd) and Ctrl-C.
    asyncio.run(run_agent(config))
    return 0
