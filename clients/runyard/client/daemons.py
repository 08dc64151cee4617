"""`runyard server` and `runyard agent`: settings in, long-running process out.

The server and the agent are imported only here, inside the commands, so the client
commands (and `runyard --help`) never pay for SQLAlchemy, NATS or the training
runtime, and a client-only installation (`pip install runyard`) still works: these
two commands then say which extra to install (`runyard.extras`).
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from runyard import extras
from runyard.client.errors import ClientError
from runyard.config import Settings


def _not_installed(part: str, e: ModuleNotFoundError) -> NoReturn:
    """A missing runyard.server/agent module or dependency is an installation gap; any other import error is a bug."""
    raise extras.explain(f"`runyard {part}`", e, part) from None


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
        "bootstrap_agent_id": settings.bootstrap_agent_id,
        "nats_nkey_file": settings.nats_nkey,
        "nats_ca_file": settings.nats_ca,
        "tls_cert_file": settings.tls_cert,
        "tls_key_file": settings.tls_key,
        "allow_plaintext": getattr(args, "allow_plaintext", None) or None,
        "bootstrap_storage_prefixes": tuple(getattr(args, "bootstrap_storage", None) or ()) or None,
    }
    return {k: v for k, v in fields.items() if v is not None}


def cmd_server(args: argparse.Namespace, settings: Settings) -> int:
    extras.require("`runyard server`", "server")
    try:
        from runyard.server.config import ServerConfig
        from runyard.server.main import run_server
    except ModuleNotFoundError as e:
        _not_installed("server", e)
    try:
        config = ServerConfig(**server_config_kwargs(settings, args))
        config.check()
        _check_nats_files(config.nats_url, config.nats_nkey_file, config.nats_ca_file)
    except ValueError as e:  # a setting out of range or unsafe: say which, no traceback
        raise ClientError(str(e)) from None
    run_server(config)
    return 0


def _check_nats_files(url: str, nkey_file: str | None, ca_file: str | None) -> None:
    """A missing NKey seed or CA file is a one-line error now, not a traceback once NATS is dialled."""
    from runyard.natsauth import connect_options

    connect_options(url, nkey_file, ca_file)


def default_agent_id() -> str:
    """The host name, made safe for NATS subjects and ids: lowercase letters, digits, dashes."""
    from runyard.bus import host_agent_id

    return host_agent_id()


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
        "checkpoint_interval_s": getattr(args, "checkpoint_interval", None),
        "runtime": getattr(args, "runtime", None),
        "engine_url": getattr(args, "engine_url", None),
        "max_code_extract_bytes": getattr(args, "max_code_extract_bytes", None),
        "max_code_files": getattr(args, "max_code_files", None),
        "api_key": settings.api_key,
        "nats_nkey_file": settings.nats_nkey,
        "nats_ca_file": settings.nats_ca,
        "sandbox": getattr(args, "sandbox", None),
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

    extras.require("`runyard agent`", "agent")
    try:
        from runyard.agent.config import AgentConfig
        from runyard.agent.main import run_agent
    except ModuleNotFoundError as e:
        _not_installed("agent", e)
    config = AgentConfig(**agent_config_kwargs(settings, args))
    if config.slots is not None and config.slots < 1:
        raise ClientError(f"--slots must be at least 1, got {config.slots}")
    try:
        _check_nats_files(config.nats_url, config.nats_nkey_file, config.nats_ca_file)
    except ValueError as e:
        raise ClientError(str(e)) from None

    # A busy agent makes a few small objects for every line a run prints (hundreds of thousands a
    # second): keep the start-up heap (protobuf, boto3, tensorboard modules) out of every full
    # collection, and collect the young generation less often: 13-23% less agent CPU in
    # bench/metrics_ingest.py.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    # run_agent stops gracefully on SIGTERM (`runyard down`, Kubernetes, systemd) and Ctrl-C.
    from runyard.agent.sandbox import SandboxError

    try:
        asyncio.run(run_agent(config))
    except SandboxError as e:
        raise ClientError(str(e)) from None
    return 0
