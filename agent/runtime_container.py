"""The container runtime: each attempt in a fresh, sandboxed OCI container.

Why a container and not a process: a run is another account's code on a
shared GPU host. In its container it runs as a fixed unprivileged uid with no
capabilities and ``no-new-privileges``, on a read-only root file system with
only ``/tmp`` (a size-capped tmpfs), ``/runyard/result`` and
``/runyard/output`` writable; it sees no other run's folders, no agent keys
(its environment is the allowlist of `runyard.agent.env`, nothing of the
agent's own) and, without ``network: egress``, no network at all (its own
loopback only: NATS, PostgreSQL and the control plane on the host's loopback
are out of reach; with egress it gets the engine's bridge, never the host's
network). ``resources.memory`` and ``resources.cpus`` become the container's
cgroup limits, and a pids limit stops a fork bomb.

One code path for Podman and Docker Engine: both are driven through the
``docker`` SDK (`runyard.agent.engine`). Only GPUs differ: Podman takes CDI
devices (``nvidia.com/gpu=<uuid>``), Docker takes device requests.

The init shim. The container's command is a small POSIX sh script the agent
bind-mounts read-only (so it works in any image that has ``/bin/sh``). It
runs the user's command with its output appended to files in
``/runyard/output``, which the agent tails: files survive an agent restart,
which is what lets a restarted agent reattach with no line lost or repeated.
It forwards SIGTERM/SIGINT to every process of the run, and when the command
has ended it reads the container's memory cgroup: Podman's ``OOMKilled`` is
not reliable on cgroup v1 (conmon misses the kill), the cgroup's own
``oom_kill`` counter is. It records exit status and OOM kills in
``/runyard/output/exit``, which the agent watches: Podman's compat ``wait``
answers up to a second late, a file poll within tens of milliseconds. The
engine's state is the backstop (and the authority on the exit code).

Every file the agent reads from a folder the run can write is opened with
O_NOFOLLOW and checked to be a regular file: a run could plant a symbolic
link to a host file there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import docker.errors
import docker.types
import structlog

# The SDK's own split of `containers.create` arguments (docker>=7.1,<8), used without its extra inspect.
from docker.models.containers import _create_container_args  # type: ignore[attr-defined]

from runyard.agent import output_files
from runyard.agent.engine import engine_kind
from runyard.agent.env import build_run_env
from runyard.agent.images import FrameworkImage, framework_images
from runyard.agent.staging import RunDirs
from runyard.v1.agent_pb2 import WorkAssignment
from runyard.v1.common_pb2 import RunNetwork

log = structlog.get_logger("runyard.agent.runtime_container")

# Paths inside the container (see RULES: the shared contract with the images and reattach).
CONTAINER_ROOT = PurePosixPath("/runyard")
CODE = CONTAINER_ROOT / "code"
DATA = CONTAINER_ROOT / "data"
RESULT = CONTAINER_ROOT / "result"
CHECKPOINT = CONTAINER_ROOT / "checkpoint"
OUTPUT = CONTAINER_ROOT / "output"
INIT = CONTAINER_ROOT / "bin" / "init"
#: Names of the shim's files in the output folder (host: <attempt root>/output/...).
STDOUT_NAME = "stdout"
STDERR_NAME = "stderr"
EXIT_NAME = "exit"

LABEL_AGENT = "org.runyard.agent"
LABEL_RUN = "org.runyard.run"
LABEL_ATTEMPT = "org.runyard.attempt"

#: The PATH a run gets when its image declares none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# How often the agent looks for the shim's exit file, and asks the engine for the state.
EXIT_POLL_S = 0.02
STATE_POLL_S = 1.0
# After the exit file is written the shim exits at once: how long the engine may take to say so.
EXITED_WAIT_S = 10.0

INIT_SHIM = r"""#!/bin/sh
# Runyard's init shim (PID 1 of a run's container): runs the command given as $1 with its output
# appended to /runyard/output/{stdout,stderr}, forwards SIGTERM/SIGINT to every process of the run,
# and records "<exit status> <oom kills>" in /runyard/output/exit once the command has ended.
out=/runyard/output
/bin/sh -c "$1" </dev/null >>"$out/stdout" 2>>"$out/stderr" &
child=$!
trap 'kill -TERM -1 2>/dev/null' TERM
trap 'kill -INT -1 2>/dev/null' INT
while :; do
    wait "$child"
    status=$?
    # wait also returns when a trapped signal arrives; the command may still run.
    kill -0 "$child" 2>/dev/null || break
done
oom_kills() {
    while read -r key value; do
        if [ "$key" = oom_kill ]; then echo "$value"; return; fi
    done <"$1"
    echo 0
}
oom=0
if [ -r /sys/fs/cgroup/memory.events ]; then
    oom=$(oom_kills /sys/fs/cgroup/memory.events)
elif [ -r /sys/fs/cgroup/memory/memory.oom_control ]; then
    oom=$(oom_kills /sys/fs/cgroup/memory/memory.oom_control)
fi
printf '%s %s\n' "$status" "$oom" >"$out/exit"
exit "$status"
"""


class ContainerError(RuntimeError):
    """The engine refused to run the attempt (no such image, a bad request); the message says which."""


@dataclass(frozen=True)
class Sandbox:
    """What every run's container gets, whoever's image it is."""

    uid: int = 65534
    gid: int = 65534
    pids_limit: int = 4096
    tmp_bytes: int = 1 << 30
    #: Seconds the engine may take to create and start a container.
    engine_timeout_s: float = 60.0


@dataclass(frozen=True)
class ContainerPlan:
    """Everything one attempt's container is made of (pure data: `create_options` turns it into a request)."""

    name: str
    image: str
    command: str
    env: Mapping[str, str]
    labels: Mapping[str, str]
    code: Path
    data: Path
    result: Path
    output: Path
    init: Path
    #: $CHECKPOINT_DIR on the host; None: not mounted (a plan made before checkpoints).
    checkpoint: Path | None = None
    memory_bytes: int = 0
    cpus: float = 0.0
    egress: bool = False
    gpu_uuids: tuple[str, ...] = ()
    sandbox: Sandbox = field(default_factory=Sandbox)


def container_name(agent_id: str, run_id: str, attempt: int) -> str:
    return f"runyard-{agent_id}-{run_id}-{attempt}"


def container_dirs(host: RunDirs) -> RunDirs:
    """The attempt's folders as the run sees them inside its container."""
    return RunDirs(
        root=Path(CONTAINER_ROOT),
        code=Path(CODE),
        data=Path(DATA),
        result=Path(RESULT),
        checkpoint=Path(CHECKPOINT),
        output=Path(OUTPUT),
        metrics_file=Path(OUTPUT / host.metrics_file.name),
        code_archive=Path(CONTAINER_ROOT / host.code_archive.name),
        transcript=Path(CONTAINER_ROOT / host.transcript.name),
        # The tmpfs: the one writable place of the container besides the run's folders.
        home=Path("/tmp"),
        tmp=Path("/tmp"),
    )


#: The first Podman whose Docker-compatible API attaches CDI devices (containers/podman#25171). Older ones
#: accept such a request and start the container without the GPU, so the runtime refuses to start it.
PODMAN_CDI_VERSION = (5, 4)


def cdi_name(uuid: str) -> str:
    """A GPU's CDI device, as `nvidia-ctk cdi generate --device-name-strategy=uuid` names it."""
    return f"nvidia.com/gpu={uuid}"


def gpu_options(engine: str, gpu_uuids: Sequence[str]) -> dict[str, Any]:
    """The GPUs by UUID: CDI devices on Podman, NVIDIA device requests on Docker Engine.

    Podman's compat API takes CDI devices only as device requests of the ``cdi``
    driver (``HostConfig.Devices`` reach it as ``host:container:perms`` strings, which
    are no CDI names); Docker Engine's NVIDIA runtime takes the UUIDs themselves.
    """
    if not gpu_uuids:
        return {}
    if engine == "podman":
        request = docker.types.DeviceRequest(driver="cdi", device_ids=[cdi_name(u) for u in gpu_uuids])
    else:
        request = docker.types.DeviceRequest(driver="nvidia", device_ids=list(gpu_uuids), capabilities=[["gpu"]])
    return {"device_requests": [request]}


def engine_version(client: docker.DockerClient) -> tuple[int, ...]:
    """The engine's own version (Podman's, or Docker Engine's) as numbers: (5, 4, 2)."""
    text = str(client.version().get("Version", ""))
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def check_gpu_support(engine: str, version: tuple[int, ...], gpu_uuids: Sequence[str]) -> None:
    """Refuse GPUs an engine would silently leave out (raises ContainerError)."""
    if gpu_uuids and engine == "podman" and version < PODMAN_CDI_VERSION:
        have = ".".join(map(str, version)) or "?"
        need = ".".join(map(str, PODMAN_CDI_VERSION))
        raise ContainerError(
            f"Podman {have} cannot attach GPUs through its Docker-compatible API (Podman {need} or newer can): "
            "upgrade Podman on this agent, or run it with --runtime process"
        )


def create_options(plan: ContainerPlan, engine: str) -> dict[str, Any]:
    """Keyword arguments of ``client.containers.create`` for the plan (pure)."""
    box = plan.sandbox
    mounts = [
        docker.types.Mount(str(CODE), str(plan.code), type="bind", read_only=True),
        docker.types.Mount(str(DATA), str(plan.data), type="bind", read_only=True),
        docker.types.Mount(str(RESULT), str(plan.result), type="bind", read_only=False),
        docker.types.Mount(str(OUTPUT), str(plan.output), type="bind", read_only=False),
        *(
            [docker.types.Mount(str(CHECKPOINT), str(plan.checkpoint), type="bind", read_only=False)]
            if plan.checkpoint is not None
            else []
        ),
        docker.types.Mount(str(INIT), str(plan.init), type="bind", read_only=True),
    ]
    options: dict[str, Any] = {
        "image": plan.image,
        "name": plan.name,
        "entrypoint": ["/bin/sh", str(INIT)],
        "command": [plan.command],
        "environment": dict(plan.env),
        "labels": dict(plan.labels),
        "working_dir": str(CODE),
        "user": f"{box.uid}:{box.gid}",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={box.tmp_bytes},mode=1777"},
        "pids_limit": box.pids_limit,
        "mounts": mounts,
        # Never host networking: the control plane, NATS and PostgreSQL listen on the host's loopback.
        "network_mode": "bridge" if plan.egress else "none",
        "cgroupns": "private",
        "stop_signal": "SIGTERM",
        "stdin_open": False,
        "tty": False,
        "detach": True,
    }
    if plan.memory_bytes > 0:
        # Swap would let a run go past its memory: the same figure for both.
        options["mem_limit"] = plan.memory_bytes
        options["memswap_limit"] = plan.memory_bytes
    if plan.cpus > 0:
        options["nano_cpus"] = int(plan.cpus * 1e9)
    options.update(gpu_options(engine, plan.gpu_uuids))
    return options


_EXIT_LINE = re.compile(rb"^(\d{1,3}) (\d+)\n")


def parse_exit_file(data: bytes) -> tuple[int, int] | None:
    """(exit status, OOM kills) from the shim's exit file; None while it is not completely written."""
    m = _EXIT_LINE.match(data)
    return (int(m[1]), int(m[2])) if m else None


def read_run_file(path: Path, limit: int = 4096) -> bytes | None:
    """A file in a folder the run can write: never through a link, only a regular file; None otherwise."""
    try:
        fd = output_files.open_run_file(path)
    except (OSError, output_files.UnsafeOutputFile):
        return None
    try:
        # At most `limit` bytes: the run may have made the file huge.
        return os.pread(fd, limit, 0)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ContainerExit:
    """How the container ended: the engine's exit code, and whether the kernel killed it for memory."""

    exit_code: int
    oom_killed: bool

    @property
    def returncode(self) -> int:
        """As a subprocess would say it: -N for a signal N (exit codes 129..159 past a shim mean a signal)."""
        if 128 < self.exit_code < 160:
            return -(self.exit_code - 128)
        return self.exit_code


class ContainerProcess:
    """One attempt's container, started; the worker waits for it, stops it, removes it."""

    def __init__(self, client: docker.DockerClient, container_id: str, name: str, output: Path) -> None:
        self._client = client
        self.id = container_id
        self.name = name
        self.output = output
        self.returncode: int | None = None
        self.exit: ContainerExit | None = None

    @property
    def stdout_path(self) -> Path:
        return self.output / STDOUT_NAME

    @property
    def stderr_path(self) -> Path:
        return self.output / STDERR_NAME

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = self._client.api.inspect_container(self.id)["State"]
        return state

    async def wait(self) -> ContainerExit:
        """Until the container has ended: the shim's exit file first, the engine's state as the backstop."""
        if self.exit is not None:
            return self.exit
        exit_file = self.output / EXIT_NAME
        next_state = time.monotonic() + STATE_POLL_S
        shim: tuple[int, int] | None = None
        state: dict[str, Any] | None = None
        while True:
            data = read_run_file(exit_file)
            if data is not None and (shim := parse_exit_file(data)) is not None:
                break
            if time.monotonic() >= next_state:
                state = await asyncio.to_thread(self._state)
                if not state.get("Running") and state.get("Status") not in ("created", "configured"):
                    break
                next_state = time.monotonic() + STATE_POLL_S
            await asyncio.sleep(EXIT_POLL_S)
        deadline = time.monotonic() + EXITED_WAIT_S
        while state is None or state.get("Running"):
            state = await asyncio.to_thread(self._state)
            if not state.get("Running"):
                break
            if time.monotonic() >= deadline:
                # The shim wrote its file but the container lives on: something else holds it open.
                await asyncio.to_thread(self.kill)
                deadline = time.monotonic() + EXITED_WAIT_S
            await asyncio.sleep(EXIT_POLL_S)
        if shim is None:  # the shim ended before writing (killed): the file may have landed meanwhile
            data = read_run_file(exit_file)
            shim = parse_exit_file(data) if data is not None else None
        code = int(state.get("ExitCode", -1))
        oom = bool(state.get("OOMKilled")) or (shim is not None and shim[1] > 0)
        self.exit = ContainerExit(code, oom)
        self.returncode = self.exit.returncode
        return self.exit

    def kill(self) -> None:
        with contextlib.suppress(docker.errors.APIError):
            self._client.api.kill(self.id, signal="SIGKILL")

    def kill_group(self) -> None:
        """The worker's name for 'end it now' (as for a process group)."""
        self.kill()

    async def terminate(self, grace_s: float) -> int:
        """SIGTERM (the shim passes it on to every process of the run), SIGKILL after grace_s."""
        grace = max(int(grace_s + 0.999), 0)
        with contextlib.suppress(docker.errors.APIError):
            await asyncio.to_thread(self._client.api.stop, self.id, timeout=grace)
        ended = await self.wait()
        return ended.returncode

    def remove(self) -> None:
        """The container and its anonymous volumes (a user image's VOLUME paths), never the attempt's folders."""
        with contextlib.suppress(docker.errors.NotFound):
            try:
                self._client.api.remove_container(self.id, force=True, v=True)
            except docker.errors.APIError as e:
                log.warning("container not removed", container=self.name, error=str(e))


@dataclass(frozen=True)
class HeldContainer:
    """One of this agent's containers as the engine lists it (labels: run and attempt)."""

    id: str
    name: str
    run_id: str
    attempt: int
    status: str


def _declared_env(attrs: Mapping[str, Any]) -> dict[str, str]:
    config = attrs.get("Config") or {}
    return dict(item.split("=", 1) for item in (config.get("Env") or []) if "=" in item)


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """2.13 after 2.9; numbers before words, so any two versions compare."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-]", version))


def pick_framework_image(images: Sequence[FrameworkImage], name: str, version: str) -> FrameworkImage | None:
    """The image of that framework and version; with no version asked, the newest held."""
    matching = [i for i in images if i.name == name and (not version or i.version == version)]
    return max(matching, key=lambda i: _version_key(i.version)) if matching else None


class ContainerRuntime:
    """Starts attempts in containers on one engine; shared by every attempt of an agent."""

    def __init__(
        self,
        client: docker.DockerClient,
        agent_id: str,
        work_root: Path,
        sandbox: Sandbox | None = None,
        attach_gpus: bool = True,
    ) -> None:
        self.client = client
        #: False where the agent's GPUs are a declared inventory (`--gpus 4xH100`: tests, development):
        #: their made-up UUIDs name no device, so runs get CUDA_VISIBLE_DEVICES and no device request.
        self.attach_gpus = attach_gpus
        self.agent_id = agent_id
        self.sandbox = sandbox or Sandbox()
        self.engine = engine_kind(client)
        self.engine_version = engine_version(client)
        self.init_path = Path(work_root) / ".runtime" / "init.sh"
        self._images: list[FrameworkImage] | None = None
        self._image_env: dict[str, dict[str, str]] = {}

    def install_shim(self) -> None:
        """Write the init shim where every container mounts it from (read-only, root's)."""
        self.init_path.parent.mkdir(parents=True, exist_ok=True)
        if not self.init_path.exists() or self.init_path.read_text() != INIT_SHIM:
            tmp = self.init_path.with_suffix(".tmp")
            tmp.write_text(INIT_SHIM)
            tmp.chmod(0o644)
            os.replace(tmp, self.init_path)

    def images(self, refresh: bool = False) -> list[FrameworkImage]:
        if self._images is None or refresh:
            self._images = framework_images(self.client)
        return self._images

    def resolve_image(self, work: WorkAssignment) -> str:
        """The image a run's container starts from: its own (``image:``), else its framework's."""
        spec = work.spec
        if spec.image:
            try:
                image = self.client.images.get(spec.image)
            except docker.errors.ImageNotFound:
                raise ContainerError(
                    f"image {spec.image} is not on agent {self.agent_id}: load it there (podman load) first"
                ) from None
            self._image_env[spec.image] = _declared_env(image.attrs)
            return spec.image
        name = spec.framework.name or "python"
        found = pick_framework_image(self.images(), name, spec.framework.version)
        if found is None:
            found = pick_framework_image(self.images(refresh=True), name, spec.framework.version)
        if found is None:
            held = ", ".join(f"{i.name} {i.version}" for i in self.images()) or "none"
            asked = name + (f" {spec.framework.version}" if spec.framework.version else "")
            raise ContainerError(f"agent {self.agent_id} holds no image for framework {asked} (it holds: {held})")
        return found.image_id

    def image_env(self, image: str) -> dict[str, str]:
        """The variables the image declares (an image id's never change: asked once, then remembered)."""
        if image not in self._image_env:
            self._image_env[image] = _declared_env(self.client.images.get(image).attrs)
        return self._image_env[image]

    def plan(self, work: WorkAssignment, dirs: RunDirs, image: str) -> ContainerPlan:
        """The attempt's container: its environment is the allowlist with container-side paths."""
        spec = work.spec
        declared = self.image_env(image)
        run_env = build_run_env(work, container_dirs(dirs), "/usr/bin/python3")
        # The image's PATH (its interpreters), after the manifest's own; HOME and TMPDIR stay the tmpfs.
        image_path = declared.get("PATH", DEFAULT_PATH)
        path = spec.env.get("PATH")
        run_env["PATH"] = f"{path}:{image_path}" if path else image_path
        if "LANG" not in spec.env and "LANG" in declared:
            run_env["LANG"] = declared["LANG"]
        return ContainerPlan(
            name=container_name(self.agent_id, work.run_id, work.attempt),
            image=image,
            command=spec.command,
            env=run_env,
            labels={LABEL_AGENT: self.agent_id, LABEL_RUN: work.run_id, LABEL_ATTEMPT: str(work.attempt)},
            code=dirs.code,
            data=dirs.data,
            result=dirs.result,
            output=dirs.output,
            init=self.init_path,
            checkpoint=dirs.checkpoint,
            memory_bytes=int(spec.resources.memory_bytes),
            cpus=float(spec.resources.cpus),
            egress=spec.network == RunNetwork.RUN_NETWORK_EGRESS,
            gpu_uuids=tuple(work.gpu_ids) if self.attach_gpus else (),
            sandbox=self.sandbox,
        )

    def prepare_dirs(self, plan: ContainerPlan) -> None:
        """The run's uid gets its writable folders (and can read its code, whatever the archive's modes)."""
        box = plan.sandbox
        writable = (plan.result, plan.output, *([plan.checkpoint] if plan.checkpoint is not None else []))
        for folder in writable:
            folder.mkdir(parents=True, exist_ok=True)
        for name in (STDOUT_NAME, STDERR_NAME, "metrics.jsonl"):
            (plan.output / name).touch()
        (plan.output / EXIT_NAME).unlink(missing_ok=True)
        for top in (plan.code, *writable):
            _chown_tree(top, box.uid, box.gid)

    def _create(self, options: dict[str, Any]) -> str:
        """The engine's create call alone: the SDK's `containers.create` inspects the new container after
        it, a round trip on every run's way to RUNNING that nothing here needs."""
        args = dict(options, version=self.client.api.api_version)
        created = self.client.api.create_container(**_create_container_args(args))
        return str(created["Id"])

    def start_blocking(self, plan: ContainerPlan) -> ContainerProcess:
        """Create and start the container (a leftover of the same name, from an earlier try, goes first)."""
        check_gpu_support(self.engine, self.engine_version, plan.gpu_uuids)
        self.install_shim()
        self.prepare_dirs(plan)
        options = create_options(plan, self.engine)
        try:
            try:
                container_id = self._create(options)
            except docker.errors.APIError as e:
                if e.status_code != 409:  # 409: a leftover of the same name, from an earlier try
                    raise
                with contextlib.suppress(docker.errors.NotFound):
                    self.client.api.remove_container(plan.name, force=True, v=True)
                container_id = self._create(options)
        except docker.errors.ImageNotFound as e:
            raise ContainerError(f"image {plan.image} is not on agent {self.agent_id}: {e}") from e
        except docker.errors.APIError as e:
            raise ContainerError(f"the engine refused to create the container: {e.explanation or e}") from e
        process = ContainerProcess(self.client, container_id, plan.name, plan.output)
        try:
            self.client.api.start(container_id)
        except docker.errors.APIError as e:
            process.remove()
            raise ContainerError(f"the engine could not start the container: {e.explanation or e}") from e
        return process

    async def start(self, work: WorkAssignment, dirs: RunDirs) -> ContainerProcess:
        """One attempt's container, started (see `plan`); raises ContainerError."""
        image = await asyncio.to_thread(self.resolve_image, work)
        plan = await asyncio.to_thread(self.plan, work, dirs, image)
        return await asyncio.to_thread(self.start_blocking, plan)

    def held_containers(self) -> list[HeldContainer]:
        """This agent's containers on the engine (running or not), by their labels."""
        found = []
        # Sparse: the list answer alone, with no inspect per container, which fails (Podman: 500, not 404)
        # for a container removed between the list and the inspect.
        listed = self.client.containers.list(all=True, sparse=True, filters={"label": f"{LABEL_AGENT}={self.agent_id}"})
        for c in listed:
            labels = c.attrs.get("Labels") or {}
            try:
                attempt = int(labels.get(LABEL_ATTEMPT, ""))
            except ValueError:
                attempt = 0
            names = c.attrs.get("Names") or [""]
            name = str(names[0]).lstrip("/")
            found.append(HeldContainer(str(c.id), name, labels.get(LABEL_RUN, ""), attempt, str(c.status)))
        return found

    def reattach(self, held: HeldContainer, output: Path) -> ContainerProcess:
        """A container a previous agent process started, followed again (its output folder: `output`)."""
        return ContainerProcess(self.client, held.id, held.name, output)

    def remove(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_container(container_id, force=True, v=True)


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    """chown without following links (the agent runs as root: a link must not hand a host file over)."""
    if os.geteuid() != 0:
        # A rootless agent cannot give files away: the run's folders are opened to everyone instead.
        for dirpath, _dirs, files in os.walk(top):
            os.chmod(dirpath, 0o777)
            for name in files:
                p = os.path.join(dirpath, name)
                if not os.path.islink(p):
                    os.chmod(p, 0o666)
        return
    os.chown(top, uid, gid, follow_symlinks=False)
    for dirpath, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
