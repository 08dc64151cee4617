"""Settings of one control-plane replica, filled by the CLI from flags, RUNYARD_* and the config file."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from runyard.bus import host_agent_id


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
    # Uploaded code goes to CODE_URI_PREFIX/<account id>/<sha256>.tar.gz (see runyard.server.domain.storage).
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
    # Seconds a run must have waited for capacity before the scheduler preempts other runs for it
    # (runyard.server.domain.preemption): short waits end by themselves as runs finish.
    preemption_wait_s: float = 30.0
    # When set and no account exists yet: create account "default" with an admin and an agent
    # key and write them to this file (YAML, mode 0600). See runyard.server.first_run.
    bootstrap_keys_file: str | None = None
    # GPU quota of that first account.
    default_gpu_quota: int = 8
    # The agent id that first account's agent key is bound to (agent keys speak for one agent).
    bootstrap_agent_id: str = field(default_factory=host_agent_id)
    # NKey seed file of the control plane's NATS user (`runyard admin nats-config` makes one).
    nats_nkey_file: str | None = None
    # CA certificate (PEM) to check a tls:// NATS server against.
    nats_ca_file: str | None = None
    # Certificate chain and private key (PEM): serve gRPC over TLS.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Serve plain gRPC on a non-loopback address: only behind a proxy that terminates TLS.
    allow_plaintext: bool = False
    # Storage prefixes of that first account; empty: its own bucket, s3://default/.
    bootstrap_storage_prefixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A lease of 0 would end every attempt at once; agents stop runs after half of it.
        if not self.attempt_lease_s > 0:
            raise ValueError(f"attempt_lease_s (--attempt-lease) must be positive seconds, got {self.attempt_lease_s}")

    def check(self) -> None:
        """Refuse settings that would expose API keys: plain gRPC off loopback, half a TLS pair."""
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("--tls-cert and --tls-key go together: give both to serve TLS, or neither")
        if not self.tls_cert_file and not self.allow_plaintext and not is_loopback(self.listen):
            raise ValueError(
                f"refusing to serve plaintext gRPC on {self.listen}: API keys would cross the network in the clear. "
                "Give --tls-cert and --tls-key, listen on 127.0.0.1, or pass --allow-plaintext when a proxy "
                "in front terminates TLS"
            )


def is_loopback(listen: str) -> bool:
    """Does HOST:PORT listen on loopback only? ("localhost", 127.0.0.0/8, [::1]; not 0.0.0.0 or [::])."""
    host = listen.rsplit(":", 1)[0].strip("[]") if ":" in listen else listen
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: whatever it resolves to, it is not known to be loopback
