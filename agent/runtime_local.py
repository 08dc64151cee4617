"""The local-process runtime: a run's command as a process group on this host.

The command runs under ``/bin/sh -c`` in a new session, so the shell, the
interpreter and anything they fork (DataLoader workers, ``torchrun``
children) share one process group that a signal can reach all at once. When
the group's leader ends, any member still alive is killed: a run's processes
end with the run. Processes that leave the group themselves (``setsid``,
daemons) are out of reach of this runtime; a container runtime with its own
PID namespace is the answer to that.

A run never outlives its agent: beside each command runs a guard, a tiny
``/bin/sh`` that reads a pipe only the agent holds open. When the agent dies
(even ``kill -9``) the pipe closes, and the guard sends the command's group
SIGTERM, then SIGKILL after the kill grace. Without its agent nobody captures a
run's output or vouches for it to the control plane, whose lease would
otherwise let the run be started again elsewhere while this one still runs.
When the command ends normally the agent kills the guard first.

Sandboxed (`runyard.agent.sandbox`), the group's leader is bwrap itself, and
the command runs two processes below it in a PID namespace whose init is
bwrap's. A SIGTERM to the whole group would kill bwrap at once, which takes
the whole namespace down with SIGKILL: no grace for the command to save a
checkpoint. So a graceful stop signals every member of the group but bwrap
(the command, its children; bwrap's init ignores it), and only SIGKILL goes to
the whole group, where ending bwrap ends everything in the namespace, even
processes that left the group with ``setsid``. bwrap reports a command killed
by signal N as exit status 128+N; `wait` turns that back into -N.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from pathlib import Path


class LocalProcess:
    """One spawned command; the pid is also its process-group id."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        guard: asyncio.subprocess.Process | None = None,
        sandboxed: bool = False,
    ) -> None:
        self._proc = proc
        self._guard = guard
        self.sandboxed = sandboxed

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def stdout(self) -> asyncio.StreamReader | None:
        return self._proc.stdout

    @property
    def stderr(self) -> asyncio.StreamReader | None:
        return self._proc.stderr

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        """Exit status of the leader; negative -N when a signal N ended it. Kills leftovers."""
        code = await self._proc.wait()
        self.kill_group()
        await self.release_guard()
        if self.sandboxed and 128 < code <= 128 + 64:
            return -(code - 128)
        return code

    async def release_guard(self) -> None:
        """The command is over: the guard goes (killed before its pipe closes, so it signals nothing)."""
        guard, self._guard = self._guard, None
        if guard is None:
            return
        with contextlib.suppress(ProcessLookupError):
            guard.kill()
        if guard.stdin is not None:
            guard.stdin.close()
        await guard.wait()

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the command and everything it started (sandboxed: all but bwrap, unless SIGKILL)."""
        if self.sandboxed and sig != signal.SIGKILL:
            for pid in group_members(self._proc.pid):
                if pid != self._proc.pid:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def kill_group(self) -> None:
        self.signal_group(signal.SIGKILL)

    async def terminate(self, grace_s: float) -> int:
        """SIGTERM the group, SIGKILL it after grace_s if the leader has not exited."""
        self.signal_group(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(self.wait()), timeout=max(grace_s, 0.0))
        except TimeoutError:
            self.kill_group()
            return await self.wait()


def group_members(pgid: int) -> list[int]:
    """The processes of a process group, from /proc (a process forked meanwhile may be missed)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after its closing one.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


# The guard: waits for EOF on its stdin (the agent's end closes when the agent dies), then ends group $1.
_GUARD = 'while read -r _; do :; done; kill -TERM "-$1" 2>/dev/null; sleep "$2"; kill -KILL "-$1" 2>/dev/null'


async def spawn(
    command: str,
    cwd: Path,
    env: dict[str, str],
    kill_grace_s: float = 10.0,
    sandbox_argv: Sequence[str] | None = None,
) -> LocalProcess:
    """Start command in its own process group with piped stdout/stderr and no stdin, and its guard.

    With sandbox_argv (`runyard.agent.sandbox.Bwrap.argv`, which runs the command itself) the
    command runs in that sandbox.
    """
    argv = list(sandbox_argv) if sandbox_argv is not None else ["/bin/sh", "-c", command]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=str(cwd),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        guard = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            _GUARD,
            "runyard-guard",
            str(proc.pid),
            f"{max(kill_grace_s, 0.0):.3f}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    return LocalProcess(proc, guard, sandboxed=sandbox_argv is not None)


def describe_exit(returncode: int) -> tuple[int, str]:
    """(exit code as a shell reports it, words): -9 becomes (137, 'killed by signal SIGKILL')."""
    if returncode >= 0:
        return returncode, f"exit status {returncode}"
    signum = -returncode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return 128 + signum, f"killed by signal {name}"
