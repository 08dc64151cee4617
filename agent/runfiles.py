"""Opening a file in a folder the run can write (its output and result folders).

The agent may read what the run may not (in a container the run is another
uid; the agent is often root). So such a file is never opened through a
symbolic link (a run could plant one to a host file, the agent's keys), and
only a regular file is read: a FIFO would block the reading thread for ever.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO


class NotARegularFile(OSError):
    """The path is a link, a FIFO, a device or a folder: not read."""


def open_run_file(path: Path) -> BinaryIO:
    """Open path for reading, refusing links and anything but a regular file (raises OSError)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotARegularFile(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
