"""Reading files that a run can write: its stdout/stderr files, its metrics file.

The run owns the folder these files are in (a container's ``/runyard/output``
is a bind mount of the attempt's ``output/`` folder), so it can replace a file
with a symbolic link to a host file (the agent's keys, another run's log) or
with a FIFO that would block the agent's open for ever. Every such file is
opened here: relative to its folder opened with O_NOFOLLOW (so neither the file
nor the folder itself may be a link), non-blocking (a FIFO cannot stall the
open), then checked to be a regular file. What fails that check is refused
with `UnsafeOutputFile`, never read.

`FileTail` follows one such file as the run appends to it: reads go by
offset (``pread``), a file that got shorter than what was read (the run
truncated it: its own doing) is read again from its start, and the bytes are
cut into lines by the capture's one `LineCutter`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

MAX_LINE_BYTES = 16 * 1024


class UnsafeOutputFile(Exception):
    """A file the run can write is not a plain file in a plain folder (a link, a FIFO, a device)."""


def open_run_file(path: Path) -> int:
    """A read-only fd of `path`, a regular file reached without following any link at its last two steps.

    Raises FileNotFoundError when it (or its folder) does not exist yet, UnsafeOutputFile when it is
    not a regular file or either step is a symbolic link.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        folder = os.open(path.parent, flags | os.O_DIRECTORY)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeOutputFile(f"{path.parent} is not a plain folder (a symbolic link?): not read") from e
        raise
    try:
        fd = os.open(path.name, flags, dir_fd=folder)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeOutputFile(f"{path} is a symbolic link: not followed") from e
        raise
    finally:
        os.close(folder)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeOutputFile(f"{path} is not a regular file ({_kind(mode)}): not read")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a plain file"


def read_run_file(path: Path, offset: int) -> tuple[bytes, int]:
    """What `path` holds from `offset` on, and the file's size; (b"", 0) when it does not exist."""
    try:
        fd = open_run_file(path)
    except FileNotFoundError:
        return b"", 0
    try:
        size = os.fstat(fd).st_size
        return (os.pread(fd, size - offset, offset) if size > offset else b""), size
    finally:
        os.close(fd)


def _within_limit(lines: list[bytes]) -> list[bytes]:
    """Lines longer than MAX_LINE_BYTES split into pieces of at most that (an empty line stays one line)."""
    if all(len(line) <= MAX_LINE_BYTES for line in lines):
        return lines
    return [line[i : i + MAX_LINE_BYTES] for line in lines for i in range(0, len(line) or 1, MAX_LINE_BYTES)]


class LineCutter:
    """Cuts a byte stream into lines of at most MAX_LINE_BYTES (pipes and files alike).

    Not `readline`: a run printing a megabyte without a newline must not stall
    or grow the agent. The cut depends only on the bytes, never on how they
    arrived in chunks, which is what lets a restarted agent cut a file again
    and find the very same lines.
    """

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        *lines, rest = (self._rest + chunk).split(b"\n")
        if len(rest) >= MAX_LINE_BYTES:  # no newline in sight: pass the long line on in pieces
            cut = len(rest) - len(rest) % MAX_LINE_BYTES
            lines.append(rest[:cut])
            rest = rest[cut:]
        self._rest = rest
        return _within_limit(lines) if lines else []

    def finish(self) -> list[bytes]:
        """The unterminated last line, once the writer is gone."""
        rest, self._rest = self._rest, b""
        return _within_limit([rest]) if rest else []


class FileTail:
    """One output file followed by offset; used from one thread at a time (the capture thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.cutter = LineCutter()
        self.truncations = 0
        self._fd: int | None = None

    def read(self, limit: int) -> tuple[list[bytes], bool]:
        """Lines completed by up to `limit` new bytes, and whether the file's end was reached.

        A file that does not exist yet reads as empty. Raises UnsafeOutputFile.
        """
        if not self._open():
            return [], True
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size < self.offset:  # truncated by the run: what is there now is read from its start
            self.offset = 0
            self.cutter = LineCutter()
            self.truncations += 1
        data = os.pread(self._fd, min(limit, size - self.offset), self.offset) if size > self.offset else b""
        self.offset += len(data)
        return self.cutter.feed(data), self.offset >= size

    def _open(self) -> bool:
        if self._fd is None:
            try:
                self._fd = open_run_file(self.path)
            except FileNotFoundError:
                return False
        return True

    def size(self) -> int:
        """The file's size now (0 while it does not exist). Raises UnsafeOutputFile."""
        return os.fstat(self._fd).st_size if self._open() and self._fd is not None else 0

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
