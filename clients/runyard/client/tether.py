"""Run a command that dies with its parent: ``python -m runyard.client.tether PARENT_PID CMD...``.

`runyard up` starts NATS, the server and the agent through this, so that if the
supervisor itself is killed (SIGKILL, OOM) its children get SIGTERM from the kernel
instead of running on as orphans that hold the port and the data folder. It sets
Linux's parent-death signal and then replaces itself with the command (same pid), which
avoids running Python code between fork and exec in a supervisor that has gRPC threads.
Elsewhere it just runs the command.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m runyard.client.tether PARENT_PID COMMAND [ARG...]", file=sys.stderr)
        return 2
    parent = int(argv[0])
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            return 1  # the parent died before the signal was armed
    command = argv[1:]
    try:
        os.execvp(command[0], command)
    except OSError as e:
        print(f"error: cannot run {command[0]}: {e.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
