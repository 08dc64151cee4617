"""An attempt's checkpoints: $CHECKPOINT_DIR up to storage while the run goes, back down for the next attempt.

Why: a run that loses its agent, is preempted or paused resumes from the last
checkpoint instead of from step 0. The run only writes files (atomically:
``name.tmp`` or a dot-name, then ``os.replace``); the agent decides when they
are stored: every ``--checkpoint-interval`` seconds while the command runs
when the folder changed, and once more after it ended, whatever the end,
before the terminal report.

Layout under the run's results URI::

    checkpoints/<attempt>-<seq>/<relative path>   the files
    checkpoints/<attempt>-<seq>.json              the manifest, written LAST

Only then is RunCheckpointed reported. A checkpoint whose manifest is missing
(the agent died, an upload failed halfway) was never reported, so it is never
restored: the manifest-last rule is what makes a half-written checkpoint
harmless. The restore checks the manifest's sha256 against the one reported,
then each file's size and sha256.

The folder is user code's: links are never followed, names starting with
"." or ending in ".tmp"/".partial" (writes in progress) are left out, and
each file is copied, hashed on the way, into a snapshot folder the run cannot
reach before it is uploaded, so a file rewritten during the upload cannot
make the stored bytes differ from the manifest's digest.

Everything but `CheckpointUploader` is synchronous (boto3 blocks): it runs
in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from runyard.agent.reporter import AttemptReports
from runyard.agent.staging import StagingError, check_uri
from runyard.objectstore import ObjectStore, ObjectStoreError
from runyard.server.domain.checkpoint_layout import checkpoint_prefix
from runyard.server.domain.units import format_bytes
from runyard.v1.common_pb2 import Checkpoint

log = structlog.get_logger("runyard.agent.checkpoints")

IGNORED_SUFFIXES = (".tmp", ".partial")
DEFAULT_INTERVAL_S = 30.0
_CHUNK = 1 << 20
#: What one file's state is taken to be: (size, mtime_ns, inode). A changed one is stored again.
Signature = dict[str, tuple[int, int, int]]


class CheckpointError(StagingError):
    """A checkpoint could not be restored; the message names it."""


def ignored(name: str) -> bool:
    """A write in progress, by the atomic-write convention: never part of a checkpoint."""
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES)


def scan(root: Path) -> Signature:
    """The regular files under root (relative POSIX path -> size, mtime, inode); links are not followed."""
    found: Signature = {}

    def walk(folder: Path, rel: str) -> None:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return
        for entry in entries:
            if ignored(entry.name):
                continue
            path = f"{rel}{entry.name}"
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                walk(Path(entry.path), path + "/")
            elif stat.S_ISREG(st.st_mode):
                found[path] = (st.st_size, st.st_mtime_ns, st.st_ino)

    walk(root, "")
    return found


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    sha256: str


def snapshot(src: Path, dest: Path, paths: list[str]) -> list[ManifestFile]:
    """Copy the files (opened without following links) into dest, hashing them; a vanished one is left out."""
    if dest.exists():
        shutil.rmtree(dest)
    files: list[ManifestFile] = []
    for rel in sorted(paths):
        try:
            fd = os.open(src / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (FileNotFoundError, OSError):
            continue  # gone, replaced by a link, unreadable: not part of this checkpoint
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            out_path = dest / rel
            out_path.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            size = 0
            with out_path.open("wb") as out:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        files.append(ManifestFile(rel, size, digest.hexdigest()))
    return files


def store_checkpoint(
    store: ObjectStore,
    results_uri: str,
    run_id: str,
    attempt: int,
    seq: int,
    step: int,
    src: Path,
    scratch: Path,
    paths: list[str],
) -> Checkpoint:
    """Snapshot, upload the files, then the manifest (last); the Checkpoint to report. Raises ObjectStoreError."""
    checkpoint_id = f"{attempt}-{seq}"
    prefix = checkpoint_prefix(results_uri, checkpoint_id)
    try:
        files = snapshot(src, scratch, paths)
        for f in files:
            store.upload_file(scratch / f.path, f"{prefix}/{f.path}")
        manifest = {
            "checkpoint_id": checkpoint_id,
            "run_id": run_id,
            "attempt": attempt,
            "step": step,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files],
        }
        data = json.dumps(manifest, sort_keys=True).encode()
        manifest_uri = f"{prefix}.json"
        store.put_bytes(manifest_uri, data)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Checkpoint(
        checkpoint_id=checkpoint_id,
        run_id=run_id,
        attempt=attempt,
        step=step,
        size_bytes=sum(f.size for f in files),
        files=len(files),
        manifest_uri=manifest_uri,
        manifest_sha256=hashlib.sha256(data).hexdigest(),
        time_us=time.time_ns() // 1000,
    )


def last_seq(store: ObjectStore, results_uri: str, attempt: int) -> int:
    """The highest seq of this attempt's stored manifests (an agent restarted under an adopted container)."""
    pattern = re.compile(rf"/checkpoints/{attempt}-(\d+)\.json$")
    try:
        infos = store.list(f"{results_uri.rstrip('/')}/checkpoints/")
    except ObjectStoreError:
        return 0
    return max((int(m.group(1)) for i in infos if (m := pattern.search(i.uri))), default=0)


def _safe_path(path: object, checkpoint_id: str) -> str:
    if not isinstance(path, str) or not path or "\\" in path or "\x00" in path:
        raise CheckpointError(f"checkpoint {checkpoint_id}: bad file path {path!r} in its manifest")
    norm = posixpath.normpath(path)
    if path.startswith("/") or norm != path or norm == ".." or norm.startswith("../") or norm == ".":
        raise CheckpointError(f"checkpoint {checkpoint_id}: file path {path!r} points outside $CHECKPOINT_DIR")
    return norm


def restore_checkpoint(store: ObjectStore, checkpoint: Checkpoint, dest: Path) -> tuple[int, int]:
    """Download a checkpoint into dest (fresh, empty), checking every digest; (files, bytes). Raises CheckpointError."""
    cid = checkpoint.checkpoint_id
    uri = checkpoint.manifest_uri
    if not uri.endswith(".json"):
        raise CheckpointError(f"checkpoint {cid}: manifest URI {uri!r} does not end in .json")
    try:
        check_uri("checkpoint", uri)
    except StagingError as e:
        raise CheckpointError(f"checkpoint {cid}: {e}") from None
    prefix = uri[: -len(".json")]
    try:
        data = store.get_bytes(uri)
    except ObjectStoreError as e:
        raise CheckpointError(f"cannot restore checkpoint {cid}: manifest {uri}: {e}") from e
    if hashlib.sha256(data).hexdigest() != checkpoint.manifest_sha256:
        raise CheckpointError(f"cannot restore checkpoint {cid}: manifest {uri} does not match its sha256")
    try:
        entries = json.loads(data)["files"]
        files = [(_safe_path(e["path"], cid), int(e["size"]), str(e["sha256"])) for e in entries]
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot restore checkpoint {cid}: manifest {uri} unreadable: {e!r}") from e
    total = 0
    for rel, size, sha in files:
        target = dest / rel
        partial = target.with_name(target.name + ".partial")
        try:
            store.download_file(f"{prefix}/{rel}", partial)
        except (ObjectStoreError, OSError) as e:  # OSError: a path through one of its own files
            raise CheckpointError(f"cannot restore checkpoint {cid}: file {rel}: {e}") from e
        got_size, got_sha = _digest(partial)
        if got_size != size or got_sha != sha:
            partial.unlink(missing_ok=True)
            raise CheckpointError(
                f"cannot restore checkpoint {cid}: file {rel} has {got_size} bytes sha256 {got_sha[:12]}, "
                f"its manifest says {size} bytes sha256 {sha[:12]}"
            )
        os.replace(partial, target)
        total += size
    return len(files), total


def _digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class CheckpointUploader:
    """Takes one attempt's checkpoints: `start` the periodic ones, `finish` for the last one."""

    def __init__(
        self,
        store: ObjectStore,
        reports: AttemptReports,
        *,
        run_id: str,
        attempt: int,
        results_uri: str,
        folder: Path,
        scratch: Path,
        step: Callable[[], int | None],
        agent_line: Callable[[str], None],
        resumed_step: int = 0,
    ) -> None:
        self._store = store
        self._reports = reports
        self._run_id = run_id
        self._attempt = attempt
        self._results_uri = results_uri
        self._folder = folder
        self._scratch = scratch
        self._step = step
        self._agent_line = agent_line
        self._resumed_step = resumed_step
        self._seq: int | None = None
        self._last: Signature = {}
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._said_no_uri = False
        self.taken: list[Checkpoint] = []

    async def prime(self) -> None:
        """What is there now (a restored checkpoint) counts as stored already."""
        self._last = await asyncio.to_thread(scan, self._folder)

    def start(self, interval_s: float) -> None:
        if self._loop is None and interval_s > 0:
            self._loop = asyncio.create_task(self._every(interval_s), name="checkpoints")

    async def _every(self, interval_s: float) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=interval_s)
            if self._stop.is_set():
                return
            await self.take()

    async def stop(self) -> None:
        """Stop the periodic ones (one in flight completes); no last one (the agent detaches)."""
        self._stop.set()
        if self._loop is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None

    async def finish(self) -> None:
        """The command ended: stop the periodic ones (one in flight completes), then the last one."""
        await self.stop()
        await self.take()

    async def take(self) -> Checkpoint | None:
        """A checkpoint when the folder changed since the last one; None otherwise or when it failed."""
        async with self._lock:
            try:
                return await self._take()
            except Exception as e:  # a checkpoint lost is a line in the log, never the attempt's end
                log.exception("checkpoint failed", run_id=self._run_id, attempt=self._attempt)
                self._agent_line(f"checkpoint not stored: {e}")
                return None

    async def _take(self) -> Checkpoint | None:
        signature = await asyncio.to_thread(scan, self._folder)
        if signature == self._last or not signature:
            return None
        if not self._results_uri:
            if not self._said_no_uri:
                self._said_no_uri = True
                self._agent_line("no results URI: $CHECKPOINT_DIR is not stored (no checkpoints)")
            self._last = signature
            return None
        if self._seq is None:
            self._seq = await asyncio.to_thread(last_seq, self._store, self._results_uri, self._attempt)
        self._seq += 1
        seen = self._step()
        step = seen if seen is not None else self._resumed_step
        started = time.monotonic()
        try:
            checkpoint = await asyncio.to_thread(
                store_checkpoint,
                self._store,
                self._results_uri,
                self._run_id,
                self._attempt,
                self._seq,
                step,
                self._folder,
                self._scratch,
                list(signature),
            )
        except ObjectStoreError as e:
            raise ObjectStoreError(f"checkpoint {self._attempt}-{self._seq}: {e}") from e
        self._last = signature
        await self._reports.checkpointed(checkpoint)
        self.taken.append(checkpoint)
        self._agent_line(
            f"checkpoint {checkpoint.checkpoint_id} stored (step {step}, {checkpoint.files} files, "
            f"{format_bytes(checkpoint.size_bytes)}) in {time.monotonic() - started:.2f}s"
        )
        return checkpoint
