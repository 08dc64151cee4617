"""The local-process runtime: a run's command as a process group on this host.

The command runs under ``/bin/sh -c`` in a new session, so the shell, the
interpreter and anything they fork (DataLoader workers, ``torchrun``
children) share one process group that a signal can reach all at once. When
the group's leader ends, any member still alive is killed: a run's processes
end with the run. Processes that leave the group themselves (``setsid``,
daemons) are out of reach of this runtime; a container runtime with its own
PID namespace is the answer to that.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path


class LocalProcess:
    """One spawned command; the pid is also its process-group id."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

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
        return code

    def signal_group(self, sig: signal.Signals) -> None:
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


async def spawn(command: str, cwd: Path, env: dict[str, str]) -> LocalProcess:
    """Start command in its own process group with piped stdout/stderr and no stdin."""
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        command,
        cwd=str(cwd),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    return LocalProcess(proc)


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
