"""Settings of one node agent, filled by the CLI from flags, RUNYARD_* and the config file."""

from __future__ import annotations

from dataclasses import dataclass, field

from runyard.agent.archive_limits import MAX_EXTRACTED_BYTES, MAX_EXTRACTED_FILES
from runyard.agent.gpus import Gpu


@dataclass(frozen=True)
class AgentConfig:
    agent_id: str
    nats_url: str = "nats://127.0.0.1:4222"
    # Runs the agent holds at once; None: one per GPU, or 1 on a host without GPUs.
    slots: int | None = None
    # The host's GPUs when declared (tests, development: `--gpus 4xH100`); None: detect them through NVML.
    gpus: tuple[Gpu, ...] | None = None
    # Per-run work directories live under here.
    work_dir: str = "runyard-agent"
    storage_root: str | None = None
    s3_endpoint_url: str | None = None
    # Framework name -> Python interpreter that runs it (local-process runtime).
    # Empty: the agent's own interpreter offers "pytorch" and "python".
    frameworks: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    heartbeat_s: float = 2.0
    # Seconds between SIGTERM and SIGKILL on cancel.
    cancel_grace_s: float = 10.0
    # Seconds between checkpoints of $CHECKPOINT_DIR while a command runs (runyard.agent.checkpoints).
    checkpoint_interval_s: float = 30.0
    # Work folders of failed attempts kept for a look (newest first); ended-well ones are removed at once.
    keep_failed_workdirs: int = 3
    # What one code archive may expand to on disk (runyard.agent.archive_limits): bytes, and files and folders.
    max_code_extract_bytes: int = MAX_EXTRACTED_BYTES
    max_code_files: int = MAX_EXTRACTED_FILES
    # A ROLE_AGENT API key: sent with every report (the control plane refuses reports without one).
    api_key: str = field(default="", repr=False)
    # "process": each command a local process (development, `make demo`); "container": each attempt in a
    # sandboxed container on an OCI engine (runyard.agent.runtime_container).
    runtime: str = "process"
    # The engine's API URL for the container runtime; None: runyard.agent.engine's default lookup.
    engine_url: str | None = None
    # The process runtime's sandbox (runyard.agent.sandbox): "auto" (bwrap when it works here), "bwrap", "none".
    sandbox: str = "auto"
    # NKey seed file of this agent's NATS user (`runyard admin keys create --role agent` prints the seed).
    nats_nkey_file: str | None = None
    # CA certificate (PEM) to check a tls:// NATS server against.
    nats_ca_file: str | None = None
