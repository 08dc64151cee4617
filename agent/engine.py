"""The OCI engine the container runtime and the image builder talk to: Podman or Docker Engine.

Both speak the Docker Engine API, so one maintained client (the ``docker`` SDK)
drives either: Podman through ``podman system service`` (daemonless: the
service is only an API socket in front of the same storage the ``podman`` CLI
uses), Docker Engine through its daemon's socket. Nothing here knows which one
answers beyond what `engine_kind` reads off the version reply.

Where the engine lives, first match wins: the URL given (``--engine-url``),
``$DOCKER_HOST``, the rootful Podman socket, the Docker socket.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

PODMAN_SOCKET = "/run/podman/podman.sock"
DOCKER_SOCKET = "/var/run/docker.sock"

#: Podman settings these hosts need (see docs/operating.md): the kernel refuses the default
#: rlimits inside a VM's container, and cgroupfs works where systemd does not run.
CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


class EngineError(RuntimeError):
    """No engine answers, or it refused a request; the message says which and how to fix it."""


def default_engine_url() -> str:
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    for path in (PODMAN_SOCKET, DOCKER_SOCKET):
        if Path(path).exists():
            return f"unix://{path}"
    return f"unix://{PODMAN_SOCKET}"


def connect(url: str | None = None, timeout_s: float = 60.0) -> docker.DockerClient:
    """A client for the engine at url (see the module docstring), checked with a ping."""
    url = url or default_engine_url()
    try:
        client = docker.DockerClient(base_url=url, timeout=int(timeout_s))
        client.ping()
    except docker.errors.DockerException as e:
        raise EngineError(
            f"no container engine answers at {url} ({e}); start one with "
            "`podman system service --time 0 unix:///run/podman/podman.sock` or point --engine-url at it"
        ) from e
    return client


def engine_kind(client: docker.DockerClient) -> str:
    """'podman' or 'docker', read off the engine's version reply."""
    version = client.version()
    names = " ".join(str(c.get("Name", "")) for c in version.get("Components", []) or [])
    return "podman" if "podman" in names.lower() else "docker"


@dataclass
class PodmanService:
    """A ``podman system service`` this process started (for `runyard up` and the tests)."""

    url: str
    process: subprocess.Popen[bytes]
    folder: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def containers_conf_env() -> dict[str, str]:
    """The environment for a podman process: CONTAINERS_CONF set to our settings unless the host has its own."""
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env and not Path("/etc/containers/containers.conf").exists():
        folder = Path(tempfile.gettempdir()) / "runyard-containers"
        folder.mkdir(exist_ok=True)
        conf = folder / "containers.conf"
        if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
            conf.write_text(CONTAINERS_CONF)
        env["CONTAINERS_CONF"] = str(conf)
    return env


def start_podman_service(folder: Path | None = None, wait_s: float = 20.0) -> PodmanService:
    """Start ``podman system service`` on a socket of its own and wait until it answers."""
    podman = shutil.which("podman")
    if podman is None:
        raise EngineError("podman is not installed: `apt-get install podman runc` (see docs/operating.md)")
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="runyard-podman-"))
    folder.mkdir(parents=True, exist_ok=True)
    socket = folder / "podman.sock"
    url = f"unix://{socket}"
    log = (folder / "podman-service.log").open("ab")
    proc = subprocess.Popen(
        [podman, "system", "service", "--time", "0", url],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=containers_conf_env(),
        start_new_session=True,
    )
    service = PodmanService(url, proc, folder)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            service.stop()
            raise EngineError(f"podman system service exited with {proc.returncode}; see {folder}/podman-service.log")
        if socket.exists():
            with contextlib.suppress(EngineError):
                connect(url, timeout_s=5).close()
                return service
        time.sleep(0.05)
    service.stop()
    raise EngineError(f"podman system service did not answer on {url} within {wait_s:.0f}s")
