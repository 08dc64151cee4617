"""A hostile training script: `python hostile.py ATTACK` tries one attack and reports what it saw.

It never raises: every probe ends in "blocked: <why>" or "SUCCEEDED: <what it got>", and the
findings go to stdout as one line ``FINDINGS {json}`` (and to $RESULT_DIR/findings.json). The
targets come from the environment the test gives the run (host paths, ports, pids): a run that
cannot see them at all is what the sandbox is for. The script exits 0 so its output is uploaded.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sys
from collections.abc import Callable

CANARY = "runyard-canary-"
findings: dict[str, str] = {}


def probe(name: str, attempt: Callable[[], str]) -> None:
    try:
        findings[name] = "SUCCEEDED: " + attempt()[:200]
    except Exception as e:  # the attack failed: say how
        findings[name] = f"blocked: {type(e).__name__}: {e}"[:300]


def read(path: str) -> Callable[[], str]:
    def attempt() -> str:
        with open(path, "rb") as f:
            return repr(f.read(100))

    return attempt


def listing(path: str) -> Callable[[], str]:
    return lambda: repr(sorted(os.listdir(path))[:20])


def write(path: str) -> Callable[[], str]:
    def attempt() -> str:
        with open(path, "w") as f:
            f.write("written by a hostile run\n")
        return f"wrote {path}"

    return attempt


def connect(host: str, port: int) -> Callable[[], str]:
    def attempt() -> str:
        with socket.create_connection((host, port), timeout=2) as s:
            s.settimeout(1)
            try:
                greeting = s.recv(100)
            except OSError:
                greeting = b""
            return f"connected to {host}:{port} {greeting[:60]!r}"

    return attempt


def target(name: str) -> str:
    return os.environ.get(name, "")


# -- the attacks -------------------------------------------------------------------------


def keys() -> None:
    """The agent's and the stack's secrets: state folder, keys file, other processes' environments, our own."""
    probe("keys_file", read(target("T_KEYS_FILE")))
    probe("nkey_file", read(target("T_NKEY_FILE")))
    probe("state_folder", listing(target("T_STATE_DIR")))
    probe("state_record", read(target("T_STATE_RECORD")))
    probe("up_state_file", read(target("T_UP_STATE")))

    def environs() -> str:
        seen = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if CANARY.encode() in data:
                seen.append(pid)
        if seen:
            return f"canary in /proc/{seen}/environ"
        raise PermissionError(f"no canary in the environ of any of {len(os.listdir('/proc'))} /proc entries")

    probe("proc_environ", environs)
    probe("agent_environ", read(f"/proc/{target('T_AGENT_PID')}/environ"))

    def own() -> str:
        leaked = sorted(k for k, v in os.environ.items() if CANARY in v)
        if leaked:
            return f"own environment holds {leaked}"
        raise PermissionError(f"no canary among {sorted(os.environ)}")

    probe("own_environment", own)


def other_runs() -> None:
    """Another run's folders, and the local object store's root."""
    probe("victim_read", read(target("T_VICTIM_FILE")))
    probe("victim_list", listing(target("T_VICTIM_RESULT")))
    probe("victim_write", write(os.path.join(target("T_VICTIM_RESULT"), "planted.txt")))
    probe("victim_overwrite", write(target("T_VICTIM_FILE")))

    def others_in_work_root() -> str:  # its own run's folder (a mount point) may show; nothing else may
        seen = sorted(os.listdir(target("T_WORK_ROOT")))
        if set(seen) - {target("RUNYARD_RUN_ID")}:
            return f"sees {seen[:10]}"
        raise PermissionError(f"sees only its own run's folder: {seen}")

    probe("work_root_list", others_in_work_root)
    probe("storage_list", listing(target("T_STORAGE_ROOT")))
    probe("storage_read", read(target("T_STORAGE_OBJECT")))
    probe("storage_write", write(os.path.join(target("T_STORAGE_ROOT"), "planted.txt")))


def network() -> None:
    """The control plane's services on loopback: NATS, PostgreSQL, the gRPC API."""
    probe("nats_4222", connect("127.0.0.1", 4222))
    probe("nats_test", connect("127.0.0.1", int(target("T_NATS_PORT") or 1)))
    probe("postgres_5432", connect("127.0.0.1", 5432))
    probe("grpc", connect("127.0.0.1", int(target("T_GRPC_PORT") or 1)))


def forge() -> None:
    """Publish a RunCompleted for another run on the agent's report subject."""

    def publish() -> str:
        import asyncio

        import nats

        from runyard import bus
        from runyard.v1.agent_pb2 import AgentReport
        from runyard.v1.events_pb2 import RunCompleted

        async def go() -> str:
            nc = await nats.connect(
                target("T_NATS_URL"), connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False
            )
            report = AgentReport(
                agent_id=target("T_AGENT_ID"),
                run_id=target("T_VICTIM_RUN"),
                completed=RunCompleted(attempt=1, results_uri="s3://forged/"),
            )
            js = nc.jetstream()
            await js.publish(bus.reports_subject(target("T_AGENT_ID")), report.SerializeToString())
            await nc.close()
            return "published a forged RunCompleted"

        return asyncio.run(asyncio.wait_for(go(), 5))

    probe("forged_report", publish)


def kill_agent() -> None:
    """Signal the agent and another run's processes."""

    def kill(pid: int, sig: int, group: bool = False) -> Callable[[], str]:
        def attempt() -> str:
            if pid <= 1:
                raise ValueError(f"no target pid ({pid})")
            (os.killpg if group else os.kill)(pid, sig)
            return f"sent signal {sig} to {'group ' if group else ''}{pid}"

        return attempt

    probe("agent_seen", kill(int(target("T_AGENT_PID") or 0), 0))
    probe("agent_killed", kill(int(target("T_AGENT_PID") or 0), signal.SIGKILL))
    probe("victim_killed", kill(int(target("T_VICTIM_PGID") or 0), signal.SIGKILL, group=True))

    def others() -> str:
        mine = {os.getpid(), os.getppid()}
        seen = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in mine and int(p) != 1]
        names = []
        for pid in seen:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    names.append(f.read().replace(b"\0", b" ")[:60].decode(errors="replace"))
            except OSError:
                continue
        host = [n for n in names if "runyard" in n or "pytest" in n or "nats" in n]
        if host:
            return f"sees host processes {host[:3]}"
        raise PermissionError(f"no host process among {len(names)} visible")

    probe("host_processes", others)


def write_outside() -> None:
    """Everywhere but $RESULT_DIR (and its own HOME, TMPDIR and /tmp)."""
    probe("code_dir", write(os.path.join(os.getcwd(), "planted.txt")))
    probe("data_dir", write(os.path.join(target("DATA_DIR"), "planted.txt")))
    probe("attempt_root", write(os.path.join(os.path.dirname(target("RESULT_DIR")), "planted.txt")))
    probe("work_root", write(os.path.join(target("T_WORK_ROOT"), "planted.txt")))
    probe("test_folder", write(target("T_OUTSIDE_FILE")))
    probe("usr", write(f"/usr/{target('T_UNIQUE')}"))
    probe("etc", write(f"/etc/{target('T_UNIQUE')}"))
    probe("interpreter", write(os.path.join(os.path.dirname(sys.executable), target("T_UNIQUE"))))

    def host_tmp() -> str:  # /tmp is the run's own tmpfs: a file there must not appear on the host
        path = f"/tmp/{target('T_UNIQUE')}"
        write(path)()
        if os.path.exists(target("T_HOST_TMP_MARKER")):
            return f"wrote {path} and sees the host's /tmp"
        raise PermissionError("wrote /tmp of its own; the host's /tmp is not visible")

    probe("host_tmp", host_tmp)
    with open(os.path.join(target("RESULT_DIR"), "allowed.txt"), "w") as f:
        f.write("results are writable\n")


def root() -> None:
    """Be root, or become it."""

    def uid() -> str:
        if os.getuid() == 0 or os.geteuid() == 0:
            return f"uid {os.getuid()} euid {os.geteuid()}"
        raise PermissionError(f"uid {os.getuid()}")

    def setuid() -> str:
        os.setuid(0)
        return "setuid(0) worked"

    def chown() -> str:
        path = os.path.join(target("RESULT_DIR"), "owned")
        open(path, "w").close()
        os.chown(path, 0, 0)
        if os.stat(path).st_uid == 0 and os.getuid() != 0:
            return "chowned a file to root"
        if os.getuid() == 0:
            return "chown as root"
        raise PermissionError(errno.EPERM, "chown had no effect")

    def mount() -> str:
        # Onto a folder of its own (never a host folder: where the sandbox fails this really mounts),
        # and undone at once when it worked.
        import ctypes

        point = os.path.join(target("RESULT_DIR"), "mnt")
        os.makedirs(point, exist_ok=True)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"none", point.encode(), b"tmpfs", 0, None) == 0:
            libc.umount2(point.encode(), 2)  # MNT_DETACH
            return "mounted a tmpfs"
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

    probe("uid", uid)
    probe("setuid", setuid)
    probe("chown", chown)
    probe("mount", mount)
    probe(
        "etc_passwd", write("/etc/passwd") if os.getuid() != 0 else lambda: "skipped: would write /etc/passwd as root"
    )


ATTACKS: dict[str, Callable[[], None]] = {
    "keys": keys,
    "other_runs": other_runs,
    "network": network,
    "forge": forge,
    "kill_agent": kill_agent,
    "write_outside": write_outside,
    "root": root,
}

if __name__ == "__main__":
    ATTACKS[sys.argv[1]]()
    line = json.dumps(findings, sort_keys=True)
    print("FINDINGS " + line, flush=True)
    try:
        with open(os.path.join(os.environ["RESULT_DIR"], "findings.json"), "w") as f:
            f.write(line)
    except OSError as e:
        print(f"cannot write findings.json: {e}", file=sys.stderr)
