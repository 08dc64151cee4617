"""The process runtime's sandbox: a run's command inside bubblewrap (``bwrap``) namespaces.

Without it a run is user code with the agent's uid and the agent's view of
the host: it could read the agent's state folder and keys, other runs'
folders, the local object store's root, and reach NATS, PostgreSQL and the
control plane on loopback. Under bwrap it gets new mount, PID, IPC, UTS,
network (and user) namespaces: a read-only root file system that holds only
the system's folders and the framework interpreter's (read-only), the
attempt's code and data (read-only) at /runyard/code and /runyard/data, its
result folder, metrics file, HOME and TMPDIR (writable) at /runyard/result,
/runyard/output/metrics.jsonl, /runyard/home and /runyard/tmp (the container
runtime's paths), a fresh /proc and /dev, a tmpfs /tmp, and a network of its own
with only a loopback (unless the manifest asked for ``network: egress``). No
capabilities, uid 65534 inside; ``--die-with-parent`` ends it with its agent.

What it does NOT isolate (the container runtime does): outside the user
namespace the run's processes have the agent's uid, so nothing but the
namespaces stands between them and the agent's files; there are no memory,
CPU or pids limits; every GPU device is visible (CUDA_VISIBLE_DEVICES only
selects); the kernel is the host's.

bwrap may be missing or refused (a container without user namespaces): it is
probed once when the agent starts; ``--sandbox auto`` then runs unsandboxed
with a warning, ``--sandbox bwrap`` refuses to start.
"""

from __future__ import annotations

import enum
import glob
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from runyard.agent.staging import RunDirs

#: The system's folders, read-only (a symlink such as /bin -> usr/bin stays a symlink).
SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: What of /etc a program needs (the loader, names, certificates, alternatives); not the rest.
ETC_ENTRIES = (
    "alternatives",
    "ca-certificates",
    "debian_version",
    "fonts",
    "gai.conf",
    "group",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "matplotlibrc",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "passwd",
    "pki",
    "protocols",
    "python3",
    "resolv.conf",
    "services",
    "ssl",
    "timezone",
    "OpenCL",
    "vulkan",
)
#: GPU device nodes, bound when present (the process runtime does not hide GPUs).
GPU_DEVICES = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri")
#: The uid and gid a run has inside its user namespace.
SANDBOX_ID = 65534
PROBE_TIMEOUT_S = 10.0
#: Where the attempt's folders appear inside: the container runtime's paths, so a run sees the same
#: DATA_DIR, RESULT_DIR and metrics file under either runtime, and nothing of the host's layout
#: (the work root, other runs' ids).
INSIDE = RunDirs(
    root=Path("/runyard"),
    code=Path("/runyard/code"),
    data=Path("/runyard/data"),
    result=Path("/runyard/result"),
    checkpoint=Path("/runyard/checkpoint"),
    output=Path("/runyard/output"),
    metrics_file=Path("/runyard/output/metrics.jsonl"),
    code_archive=Path("/runyard/code.tar.gz"),
    transcript=Path("/runyard/output.log"),
    home=Path("/runyard/home"),
    tmp=Path("/runyard/tmp"),
)

# Printed by the interpreter probe: every folder the framework interpreter reads its modules from.
_INTERPRETER_PROBE = r"""
import json, os, sys
paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
         os.path.dirname(os.path.realpath(sys.executable))]
paths += [p for p in sys.path if os.path.isabs(p)]
for name, module in list(sys.modules.items()):  # editable installs (development) map packages elsewhere
    mapping = getattr(module, "MAPPING", None)
    if name.startswith("__editable__") and isinstance(mapping, dict):
        paths += [str(v) for v in mapping.values()]
print(json.dumps(paths))
"""


class SandboxMode(enum.StrEnum):
    AUTO = "auto"
    BWRAP = "bwrap"
    NONE = "none"


class SandboxError(RuntimeError):
    """--sandbox bwrap, and bwrap is missing or does not work here."""


@dataclass(frozen=True)
class Bwrap:
    """A bwrap that works on this host, and what every sandbox gets read-only from the host."""

    path: str
    #: Framework interpreter -> the folders it needs read-only (its prefix, venv, site-packages).
    interpreter_paths: Mapping[str, tuple[str, ...]]
    gpu_devices: tuple[str, ...] = ()

    def argv(self, command: str, dirs: RunDirs, python: str, *, network: bool = False) -> list[str]:
        """The command line that runs `command` for the attempt of `dirs` with interpreter `python`."""
        return bwrap_argv(
            self.path,
            command,
            dirs,
            self.interpreter_paths.get(python, ()),
            devices=self.gpu_devices,
            network=network,
        )


def _system_binds() -> list[str]:
    args: list[str] = []
    for folder in SYSTEM_FOLDERS:
        if os.path.islink(folder):
            args += ["--symlink", os.readlink(folder), folder]
        elif os.path.isdir(folder):
            args += ["--ro-bind", folder, folder]
    for entry in ETC_ENTRIES:
        args += ["--ro-bind-try", f"/etc/{entry}", f"/etc/{entry}"]
    return args


def bwrap_argv(
    bwrap: str,
    command: str,
    dirs: RunDirs,
    readonly: Iterable[str],
    *,
    devices: Sequence[str] = (),
    network: bool = False,
) -> list[str]:
    """The bwrap command line that runs ``/bin/sh -c command`` in the attempt's sandbox.

    The attempt's folders appear at the paths of `INSIDE`: the run's environment is built for those.
    """
    args = [bwrap, "--unshare-all", *(["--share-net"] if network else [])]
    args += ["--die-with-parent", "--cap-drop", "ALL", "--uid", str(SANDBOX_ID), "--gid", str(SANDBOX_ID)]
    args += ["--hostname", "runyard", *_system_binds()]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for device in devices:
        args += ["--dev-bind-try", device, device]
    if devices:  # the GPU driver looks its devices up in /sys
        args += ["--ro-bind-try", "/sys", "/sys"]
    for path in readonly:
        args += ["--ro-bind-try", path, path]
    args += ["--ro-bind", str(dirs.code), str(INSIDE.code), "--ro-bind", str(dirs.data), str(INSIDE.data)]
    for host, inside in (
        (dirs.result, INSIDE.result),
        (dirs.checkpoint, INSIDE.checkpoint),
        (dirs.home, INSIDE.home),
        (dirs.tmp, INSIDE.tmp),
        (dirs.metrics_file, INSIDE.metrics_file),
    ):
        args += ["--bind", str(host), str(inside)]
    # The root itself (a tmpfs holding the mount points) read-only: nothing but the binds above is writable.
    args += ["--remount-ro", "/", "--chdir", str(INSIDE.code), "--", "/bin/sh", "-c", command]
    return args


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def keep_paths(paths: Iterable[str], hidden: Iterable[str]) -> tuple[str, ...]:
    """The folders worth binding: absolute, not a system folder (bound anyway), not the root nor a
    folder that holds a hidden one (a sys.path entry such as $HOME or the work root would expose the
    agent's keys or other runs' folders), and none inside another that is kept."""
    hidden = [os.path.realpath(h) for h in hidden]
    candidates = []
    for raw in paths:
        if not os.path.isabs(raw):
            continue
        path = os.path.normpath(raw)
        if path == "/" or any(_inside(path, s) for s in SYSTEM_FOLDERS) or _inside(path, "/etc"):
            continue
        if any(_inside(h, path) for h in hidden):
            continue
        candidates.append(path)
    kept: list[str] = []
    for path in sorted(set(candidates), key=len):
        if not any(_inside(path, k) for k in kept):
            kept.append(path)
    return tuple(sorted(kept))


def interpreter_paths(python: str, hidden: Iterable[str]) -> tuple[str, ...]:
    """Ask the interpreter (with a run's bare environment) which folders it imports from."""
    done = subprocess.run(
        [python, "-c", _INTERPRETER_PROBE],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise SandboxError(f"cannot ask {python} for its folders: {done.stderr.strip()[-500:]}")
    return keep_paths(json.loads(done.stdout), hidden)


def probe(mode: SandboxMode, interpreters: Iterable[str], hidden: Iterable[str]) -> tuple[Bwrap | None, str]:
    """The sandbox the agent uses, and a sentence on why (for its log).

    Raises SandboxError when mode is BWRAP and bwrap cannot be used.
    """
    if mode is SandboxMode.NONE:
        return None, "--sandbox none: runs are not sandboxed"
    found = shutil.which("bwrap")
    try:
        if found is None:
            raise SandboxError("bwrap (bubblewrap) is not on PATH: apt-get install bubblewrap")
        hidden = tuple(hidden)
        paths = {python: interpreter_paths(python, hidden) for python in dict.fromkeys(interpreters)}
        devices = tuple(sorted(p for pattern in GPU_DEVICES for p in glob.glob(pattern)))
        bwrap = Bwrap(found, paths, devices)
        _try(bwrap)
    except (SandboxError, OSError, subprocess.SubprocessError, ValueError) as e:
        if mode is SandboxMode.BWRAP:
            raise SandboxError(f"--sandbox bwrap: {e}") from None
        return None, f"runs are NOT sandboxed: {e}"
    return bwrap, f"runs are sandboxed by {found}"


def _try(bwrap: Bwrap) -> None:
    """Run a trivial command in a sandbox like a run's: namespaces can be refused (some containers)."""
    with tempfile.TemporaryDirectory(prefix="runyard-sandbox-probe-") as tmp:
        dirs = RunDirs.under(Path(tmp), "probe", 1)
        dirs.create()
        argv = bwrap_argv(bwrap.path, "exit 0", dirs, (), devices=bwrap.gpu_devices)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False, env={})
        if done.returncode != 0:
            raise SandboxError(f"bwrap does not work here: {done.stderr.strip()[-500:] or done.returncode}")
