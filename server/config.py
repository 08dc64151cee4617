"""Settings of one control-plane replica, filled by the CLI from flags, RUNYARD_* and the config file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    # SQLAlchemy URL: sqlite:///path/runyard.db or postgresql+psycopg://user@host/db
    database_url: str = "sqlite:///runyard.db"
    nats_url: str = "nats://127.0.0.1:4222"
    # When set (file:///abs/dir), object storage is that folder: s3://bucket/key -> DIR/bucket/key.
    storage_root: str | None = None
    # S3 endpoint for s3:// URIs when storage_root is not set (MinIO, IBM COS, moto); None = AWS.
    s3_endpoint_url: str | None = None
    code_uri_prefix: str = "s3://runyard/code"
    max_code_bytes: int = 100 * 1024 * 1024
    # Seconds without a heartbeat before an agent is declared lost.
    agent_timeout_s: float = 15.0
    # Seconds an attempt's agent may go without listing it in a heartbeat before the attempt is
    # ended as AGENT_LOST (re-queued while restarts remain). Agents stop an attempt themselves after
    # half of this without contact and kill it within a quarter more, so no re-queue ever overlaps
    # a live first attempt. See runyard.server.scheduler.liveness.
    attempt_lease_s: float = 60.0
    # Seconds a graceful shutdown waits for in-flight calls.
    shutdown_grace_s: float = 5.0
    # When set and no account exists yet: create account "default" with an admin and an agent
    # key and write them to this file (YAML, mode 0600). See runyard.server.first_run.
    bootstrap_keys_file: str | None = None
    # GPU quota of that first account.
    default_gpu_quota: int = 8

    def __post_init__(self) -> None:
        # A lease of 0 would end every attempt at once; agents stop runs after half of it.
        if not self.attempt_lease_s > 0:
            raise ValueError(f"attempt_lease_s (--attempt-lease) must be positive seconds, got {self.attempt_lease_s}")
