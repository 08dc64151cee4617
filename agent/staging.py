"""Moving an attempt's files: code and data down, results up, work folders away.

Runs in worker threads (boto3 is blocking); everything here is synchronous.

Code arrives as a tar.gz made by the CLI from the user's folder. It is
extracted only after every member has been checked: no absolute names, no
``..``, no links pointing outside ``code/``, no device files. The checks are
ours (clear messages) and Python's ``data`` extraction filter runs on top.

Data is staged read-only (files 0444, folders 0555) so that one run cannot
change what the next run of the experiment trains on; a process running as
root can still write, which only a container runtime prevents.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runyard.agent.archive_limits import ArchiveTooLarge, ExtractionBudget, counting_filter, scan_members
from runyard.objectstore import ObjectStore, ObjectStoreError
from runyard.storage_uri import StorageUriError, parse_storage_uri


class StagingError(Exception):
    """Code or data could not be staged; the message names the URI and the cause."""


class UnsafeArchiveError(StagingError):
    """The code archive tried to write outside its folder or held a device file."""


_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass(frozen=True)
class RunDirs:
    """WORK/<run_id>/<attempt>/ and what lives in it."""

    root: Path
    code: Path
    data: Path
    result: Path
    #: $CHECKPOINT_DIR: what the run saves to resume from; the agent uploads it (runyard.agent.checkpoints).
    checkpoint: Path
    # Files the run writes beside its results (metrics, and in a container its stdout/stderr): output/.
    output: Path
    metrics_file: Path
    code_archive: Path
    #: Everything the attempt's capture saw, uploaded as <results_uri>/attempts/<attempt>/output.log;
    #: outside every folder the run can write.
    transcript: Path
    #: The run's HOME and TMPDIR: its own, gone with the attempt's folder.
    home: Path
    tmp: Path

    @classmethod
    def under(cls, work_root: Path, run_id: str, attempt: int) -> RunDirs:
        if not _SAFE_SEGMENT.match(run_id) or run_id.startswith("."):
            raise StagingError(f"run id {run_id!r} cannot name a folder")
        root = work_root / run_id / str(attempt)
        return cls(
            root=root,
            code=root / "code",
            data=root / "data",
            result=root / "result",
            checkpoint=root / "checkpoint",
            output=root / "output",
            metrics_file=root / "output" / "metrics.jsonl",
            code_archive=root / "code.tar.gz",
            transcript=root / "output.log",
            home=root / "home",
            tmp=root / "tmp",
        )

    def create(self) -> None:
        """Fresh folders; a leftover from an earlier try of the same attempt is removed first."""
        if self.root.exists():
            remove_tree(self.root)
        for d in (self.code, self.data, self.result, self.checkpoint, self.output, self.home, self.tmp):
            d.mkdir(parents=True)
        self.metrics_file.touch()


def check_members(members: list[tarfile.TarInfo]) -> None:
    """Refuse an archive that would write outside its folder (pure: looks at names only)."""
    for m in members:
        name = m.name
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
        norm = posixpath.normpath(name)
        if norm == ".." or norm.startswith("../"):
            raise UnsafeArchiveError(f"archive member {name!r} points outside the code folder")
        if m.isdev():
            raise UnsafeArchiveError(f"archive member {name!r} is a device or FIFO")
        if m.issym():
            target = m.linkname
            if target.startswith("/"):
                raise UnsafeArchiveError(f"archive member {name!r} links to absolute path {target!r}")
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(norm), target))
            if resolved == ".." or resolved.startswith("../"):
                raise UnsafeArchiveError(f"archive member {name!r} links outside the code folder ({target!r})")
        if m.islnk():
            target = posixpath.normpath(m.linkname)
            if m.linkname.startswith("/") or target == ".." or target.startswith("../"):
                raise UnsafeArchiveError(f"archive member {name!r} hard-links outside the code folder")


def safe_extract(archive: Path, dest: Path, budget: ExtractionBudget | None = None) -> int:
    """Extract a tar(.gz) into dest after checking every member; returns the number of files.

    The budget (bytes and files it may expand to, see archive_limits) is
    checked header by header while scanning and again while writing.
    """
    budget = budget or ExtractionBudget()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = scan_members(tar, budget)
            check_members(members)
            dest.mkdir(parents=True, exist_ok=True)
            writing = ExtractionBudget(budget.max_bytes, budget.max_files)
            tar.extractall(dest, members=members, filter=counting_filter(writing))
    except ArchiveTooLarge as e:
        raise StagingError(str(e)) from e
    except tarfile.FilterError as e:
        raise UnsafeArchiveError(f"unsafe archive member: {e}") from e
    except (tarfile.TarError, EOFError, OSError) as e:
        raise StagingError(f"not a readable tar.gz archive: {e}") from e
    return sum(1 for m in members if m.isfile())


def stage_code(store: ObjectStore, code_uri: str, dirs: RunDirs, budget: ExtractionBudget | None = None) -> int:
    """Download and unpack the code archive into code/; returns the number of files."""
    if not code_uri:
        return 0
    check_uri("code", code_uri)
    try:
        store.download_file(code_uri, dirs.code_archive)
        return safe_extract(dirs.code_archive, dirs.code, budget)
    except ObjectStoreError as e:
        raise StagingError(f"cannot stage code from {code_uri}: {e}") from e
    except StagingError as e:
        raise type(e)(f"cannot stage code from {code_uri}: {e}") from e
    finally:
        dirs.code_archive.unlink(missing_ok=True)


def stage_data(store: ObjectStore, data_uri: str, data_dir: Path) -> tuple[int, int]:
    """Download the data prefix into data/ and make it read-only; returns (files, bytes).

    A URI naming one object (not a prefix) stages that file alone. An empty
    prefix is an error: a typo in the manifest's data URI would otherwise train
    on nothing and fail later with a confusing message.
    """
    if data_uri:
        check_uri("data", data_uri)
        try:
            n = store.download_prefix(data_uri, data_dir)
            if n == 0 and _is_object(store, data_uri):
                store.download_file(data_uri, data_dir / posixpath.basename(data_uri))
                n = 1
        except ObjectStoreError as e:
            raise StagingError(f"cannot stage data from {data_uri}: {e}") from e
        if n == 0:
            raise StagingError(f"cannot stage data from {data_uri}: no objects under that prefix")
    files, size = tree_size(data_dir)
    make_read_only(data_dir)
    return files, size


def _is_object(store: ObjectStore, uri: str) -> bool:
    try:
        return store.exists(uri)
    except ObjectStoreError:  # e.g. a bare bucket URI, which cannot name one object
        return False


@dataclass(frozen=True)
class Uploaded:
    """What upload_results stored, and the links in result/ it left alone (shown in the run's log)."""

    files: int
    size: int
    links: tuple[str, ...] = ()


def upload_results(store: ObjectStore, result_dir: Path, results_uri: str) -> Uploaded:
    """Upload the regular files of result/ below results_uri. Raises ObjectStoreError.

    User code wrote result/, and the agent may read what user code may not: a link
    there (to /etc/shadow, to the agent's keys) is never followed. It is skipped and
    named in `links` (path -> target), so the run's log says what was left out.
    """
    if results_uri:
        check_uri("results", results_uri)
    files, size = tree_size(result_dir)
    links: list[str] = []

    def skipped(p: Path) -> None:
        try:
            target = os.readlink(p)
        except OSError:
            target = "?"
        links.append(f"{p.relative_to(result_dir).as_posix()} -> {target}")

    if results_uri and files:
        store.upload_dir(result_dir, results_uri, follow_symlinks=False, skipped=skipped)
    else:
        _walk_links(result_dir, skipped)
    return Uploaded(files, size, tuple(links))


def upload_attempt_output(store: ObjectStore, dirs: RunDirs, results_uri: str, attempt: int, with_results: bool) -> int:
    """<results_uri>/attempts/<attempt>/: result/ (`with_results`: the attempt did not complete, its
    results would be lost with its folder) and output.log; returns the result files. Raises ObjectStoreError.

    Links in result/ are never followed (as in upload_results).
    """
    check_uri("results", results_uri)
    prefix = f"{results_uri.rstrip('/')}/attempts/{attempt}"
    files = 0
    if with_results and dirs.result.is_dir() and not dirs.result.is_symlink():
        files = store.upload_dir(dirs.result, prefix, follow_symlinks=False)
    if dirs.transcript.is_file():
        store.upload_file(dirs.transcript, f"{prefix}/output.log")
    return files


def _walk_links(path: Path, found: Callable[[Path], None]) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            if os.path.islink(os.path.join(dirpath, name)):
                found(Path(dirpath) / name)


def check_uri(field: str, uri: str) -> None:
    """Refuse a URI whose decoded form differs in meaning from its text (dot segments, '%2e%2e', '//', ...).

    The control plane checked the URI against the account's storage at submit; this is
    the agent's own check on what it is about to touch (it runs code of many accounts).
    """
    try:
        parse_storage_uri(uri)
    except StorageUriError as e:
        raise StagingError(f"{field} URI refused: {e}") from None


def tree_size(path: Path) -> tuple[int, int]:
    """Regular files under path and their bytes; links are not followed (nor counted)."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
    return files, size


def make_read_only(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o444)
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o555)
    os.chmod(path, 0o555)


def remove_tree(path: Path) -> None:
    """rmtree that also removes the read-only data folder (owner write is restored first)."""
    if not path.exists():
        return
    for dirpath, dirnames, _files in os.walk(path):
        os.chmod(dirpath, stat.S_IRWXU)
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
    shutil.rmtree(path)


def prune_work_dirs(work_root: Path, keep: int, active: set[Path]) -> list[Path]:
    """Remove attempt folders beyond the newest `keep` (not counting active ones); returns those removed."""
    candidates: list[tuple[float, Path]] = []
    if not work_root.is_dir():
        return []
    for run_dir in work_root.iterdir():
        if not run_dir.is_dir() or run_dir.name.startswith("."):  # .attempts: the agent's records
            continue
        for attempt_dir in run_dir.iterdir():
            if attempt_dir.is_dir() and attempt_dir not in active:
                candidates.append((attempt_dir.stat().st_mtime, attempt_dir))
    candidates.sort(reverse=True)
    removed = [p for _t, p in candidates[max(keep, 0) :]]
    for p in removed:
        remove_tree(p)
        remove_empty_parent(p)
    return removed


def remove_empty_parent(attempt_dir: Path) -> None:
    with contextlib.suppress(OSError):
        attempt_dir.parent.rmdir()
