"""Packing a code directory into the tar.gz that UploadCode stores and agents unpack.

The package is reproducible: entries are sorted, owners are blanked and the gzip
header carries no timestamp. The server names a package by its sha256, so
submitting unchanged code again stores nothing new.

Folders that are never part of a training run's code are left out wherever they
appear: version control (``.git``, ``.hg``, ``.svn``), virtual environments
(``.venv``), caches (``__pycache__``, ``.mypy_cache``, ``.pytest_cache``,
``.ruff_cache``, ``.ipynb_checkpoints``) and ``.runyard`` (the default data folder of
``runyard up``, which would otherwise pack earlier packages into new ones).
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
import tempfile
from pathlib import Path

from runyard.client.errors import ClientError, CodeTooLarge

__all__ = ["EXCLUDED_DIRS", "pack_code"]

EXCLUDED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".ipynb_checkpoints",
        ".runyard",
    }
)


def pack_code(code_dir: str | os.PathLike[str], max_bytes: int, dest_dir: str | None = None) -> Path:
    """Pack `code_dir` into a new tar.gz file and return its path; the caller deletes it.

    `max_bytes` is the server's limit (GetServerInfo.max_code_bytes; 0 means none). Both the
    raw size of the files and the packed size must fit, and the raw size is checked before
    anything is written, so pointing at a folder of data fails at once rather than after
    minutes of compressing.
    """
    base = Path(code_dir)
    if not base.exists():
        raise ClientError(f"code directory {base} does not exist")
    if not base.is_dir():
        raise ClientError(f"code directory {base} is not a folder")
    entries = _entries(base)
    raw = sum(size for _, size in entries)
    if max_bytes > 0 and raw > max_bytes:
        raise CodeTooLarge(str(base), raw, max_bytes)

    fd, name = tempfile.mkstemp(prefix="runyard-code-", suffix=".tar.gz", dir=dest_dir)
    out = Path(name)
    try:
        with (
            os.fdopen(fd, "wb") as raw_file,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw_file, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for rel, _ in entries:
                tar.add(base / rel, arcname=rel.as_posix(), recursive=False, filter=_anonymous)
        packed = out.stat().st_size
        if max_bytes > 0 and packed > max_bytes:
            raise CodeTooLarge(str(base), packed, max_bytes)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


def _entries(base: Path) -> list[tuple[Path, int]]:
    """(relative path, size) of every folder, file and link to pack, in a stable order."""
    found: list[tuple[Path, int]] = []
    for root, dirs, files in os.walk(base, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDED_DIRS)
        here = Path(root)
        for d in dirs:
            found.append(((here / d).relative_to(base), 0))
        for f in sorted(files):
            path = here / f
            try:
                st = path.lstat()
            except OSError as e:
                raise ClientError(f"cannot read {path}: {e.strerror}") from None
            if stat.S_ISREG(st.st_mode):
                found.append((path.relative_to(base), st.st_size))
            elif stat.S_ISLNK(st.st_mode):
                found.append((path.relative_to(base), 0))
            # sockets, fifos and devices are not code: skipped
    found.sort(key=lambda e: e[0].as_posix())
    return found


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
