"""Object storage for the agent, the control plane and the CLI.

One small API over two places objects can live:

* ``s3://bucket/key`` goes to the configured backend. With a storage root
  (``file:///abs/dir``, the embedded default of ``runyard up``) the object is the
  file ``DIR/bucket/key``; otherwise it is an S3 object reached through boto3 at
  ``s3_endpoint_url`` (AWS when None; MinIO, IBM COS, Ceph, moto otherwise), with
  credentials from the usual AWS environment, profile or instance role.
* ``file:///abs/path`` always means the local filesystem.

Prefixes are folder-like everywhere: ``s3://b/digits`` and ``s3://b/digits/``
both mean "every object whose key starts with ``digits/``", so a sibling
``digits2/`` never leaks into a listing or a download. A bare bucket
(``s3://b``) means the whole bucket.

Under a storage root a missing bucket folder is created on write (there is no
``mb`` step in the embedded setup); on real S3 a missing bucket is an error, as
it would be for any S3 client. Every failure is an `ObjectStoreError` whose
message names the URI, so a person can act on it.
"""

from __future__ import annotations

import builtins
import os
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["ObjectInfo", "ObjectStore", "ObjectStoreError", "Progress", "open_store"]

# Called with the number of bytes moved since the previous call.
Progress = Callable[[int], None]

_CHUNK = 1024 * 1024
_TMP_MARK = ".runyard-tmp-"
# Parallel transfers for upload_dir / download_prefix: many small files are
# latency-bound, and boto3 clients are thread-safe.
_TRANSFER_THREADS = 8


class ObjectStoreError(Exception):
    """An object could not be read or written; the message names the URI."""


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int


@dataclass(frozen=True)
class _S3Loc:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def open_store(storage_root: str | None, s3_endpoint_url: str | None) -> ObjectStore:
    """The store every Runyard process uses; storage_root wins when both are set."""
    root = _root_dir(storage_root) if storage_root else None
    return ObjectStore(root=root, s3_endpoint_url=s3_endpoint_url)


def _root_dir(storage_root: str) -> Path:
    if storage_root.startswith("file:"):
        return _file_path(storage_root)
    if "://" in storage_root:
        raise ObjectStoreError(f"storage root {storage_root!r} must be a file:///abs/dir URI or a local folder")
    return Path(storage_root).resolve()


def _file_path(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ObjectStoreError(f"{uri}: file URIs name a local path (file:///abs/path), not host {parts.netloc!r}")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise ObjectStoreError(f"{uri}: file URIs need an absolute path (file:///abs/path)")
    return Path(path)


def _split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ObjectStoreError(f"{uri}: no bucket name (expected s3://bucket/key)")
    return bucket, key


def _folder_prefix(key: str) -> str:
    """'digits' and 'digits/' both select keys under 'digits/'; '' is everything."""
    key = key.strip("/")
    return f"{key}/" if key else ""


def _join(uri_prefix: str, rel: str) -> str:
    return f"{uri_prefix.rstrip('/')}/{rel}"


def _safe_rel(rel: str, uri: str) -> PurePosixPath:
    """A key below a prefix, as a relative path that stays inside its folder."""
    p = PurePosixPath(rel)
    if p.is_absolute() or any(part in ("..", ".", "") for part in rel.split("/")):
        raise ObjectStoreError(f"{uri}: key {rel!r} would escape the target folder")
    return p


class _Counter:
    """Serializes progress calls made from transfer threads."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        if self._progress is not None and n:
            with self._lock:
                self._progress(n)


class ObjectStore:
    """Routes each URI to the local filesystem or S3; see the module docstring."""

    def __init__(self, root: Path | None = None, s3_endpoint_url: str | None = None) -> None:
        self._root = root
        self._endpoint = s3_endpoint_url
        self._client: S3Client | None = None
        self._client_lock = threading.Lock()

    # -- public API ---------------------------------------------------------

    def put_bytes(self, uri: str, data: bytes) -> None:
        loc = self._resolve(uri)
        if isinstance(loc, Path):
            self._write_file(loc, uri, lambda f: f.write(data))
            return
        try:
            self._s3().put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
        except Exception as e:
            raise self._s3_error(e, uri, loc) from e

    def get_bytes(self, uri: str) -> bytes:
        loc = self._resolve(uri)
        if isinstance(loc, Path):
            try:
                return loc.read_bytes()
            except FileNotFoundError:
                raise self._not_found(uri) from None
            except IsADirectoryError:
                raise ObjectStoreError(f"{uri} is a folder, not an object") from None
            except OSError as e:
                raise ObjectStoreError(f"cannot read {uri}: {e.strerror}") from e
        try:
            body = self._s3().get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
            return body.read()
        except Exception as e:
            raise self._s3_error(e, uri, loc) from e

    def upload_file(self, path: str | os.PathLike[str], uri: str, progress: Progress | None = None) -> None:
        src = Path(path)
        if not src.is_file():
            raise ObjectStoreError(f"cannot upload {src} to {uri}: not a file")
        loc = self._resolve(uri)
        if isinstance(loc, Path):
            with src.open("rb") as f:
                self._write_file(loc, uri, lambda out: _copy(f, out, progress))
            return
        try:
            self._s3().upload_file(str(src), loc.bucket, loc.key, Callback=progress)
        except Exception as e:
            raise self._s3_error(e, uri, loc) from e

    def download_file(self, uri: str, path: str | os.PathLike[str], progress: Progress | None = None) -> None:
        dest = Path(path)
        loc = self._resolve(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(loc, Path):
            try:
                with loc.open("rb") as f:
                    self._write_file(dest, str(dest), lambda out: _copy(f, out, progress))
            except FileNotFoundError:
                raise self._not_found(uri) from None
            except IsADirectoryError:
                raise ObjectStoreError(f"{uri} is a folder, not an object") from None
            return
        try:
            self._s3().download_file(loc.bucket, loc.key, str(dest), Callback=progress)
        except Exception as e:
            raise self._s3_error(e, uri, loc) from e

    def upload_dir(
        self,
        local_dir: str | os.PathLike[str],
        uri_prefix: str,
        progress: Progress | None = None,
        follow_symlinks: bool = True,
        skipped: Callable[[Path], None] | None = None,
    ) -> int:
        """Upload every file under local_dir below uri_prefix; returns the count.

        With follow_symlinks (a user's own folder, `runyard data upload`) a link to a file is
        uploaded as that file. Without it (an agent uploading what user code wrote) a link,
        to a file or a folder, is never read: `skipped` is told of each, and each file is
        opened with O_NOFOLLOW, so one swapped for a link after the walk is refused too.
        """
        base = Path(local_dir)
        if not base.is_dir() or (not follow_symlinks and base.is_symlink()):
            raise ObjectStoreError(f"cannot upload {base} to {uri_prefix}: not a folder")
        self._resolve(uri_prefix)  # a bad URI fails before any transfer
        counter = _Counter(progress)
        files = _walk_files(base) if follow_symlinks else _walk_regular_files(base, skipped or (lambda p: None))
        jobs = [(p, _join(uri_prefix, p.relative_to(base).as_posix())) for p in files]
        upload = self.upload_file if follow_symlinks else self._upload_no_follow
        self._parallel(lambda job: upload(job[0], job[1], counter), jobs)
        return len(jobs)

    def _upload_no_follow(self, path: Path, uri: str, progress: Progress | None = None) -> None:
        """Upload the file at `path` itself, refusing a link (O_NOFOLLOW) or anything but a regular file."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError as e:
            raise ObjectStoreError(f"cannot upload {path} to {uri}: {e.strerror or e} (links are not uploaded)") from e
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ObjectStoreError(f"cannot upload {path} to {uri}: not a regular file")
            loc = self._resolve(uri)
            if isinstance(loc, Path):
                self._write_file(loc, uri, lambda out: _copy(f, out, progress))
                return
            try:
                self._s3().upload_fileobj(f, loc.bucket, loc.key, Callback=progress)
            except Exception as e:
                raise self._s3_error(e, uri, loc) from e

    def download_prefix(
        self, uri_prefix: str, local_dir: str | os.PathLike[str], progress: Progress | None = None
    ) -> int:
        """Download every object below uri_prefix into local_dir, keeping sub-folders; returns the count."""
        return self.download_objects(uri_prefix, self.list(uri_prefix), local_dir, progress)

    def download_objects(
        self,
        uri_prefix: str,
        infos: builtins.list[ObjectInfo],
        local_dir: str | os.PathLike[str],
        progress: Progress | None = None,
    ) -> int:
        """Download these objects (listed below uri_prefix) into local_dir, keeping sub-folders; the count."""
        base = Path(local_dir)
        prefix_len = len(self._prefix_uri(uri_prefix))
        jobs: list[tuple[str, Path]] = []
        for info in infos:
            rel = _safe_rel(info.uri[prefix_len:], info.uri)
            jobs.append((info.uri, base.joinpath(*rel.parts)))
        base.mkdir(parents=True, exist_ok=True)
        counter = _Counter(progress)
        self._parallel(lambda job: self.download_file(job[0], job[1], counter), jobs)
        return len(jobs)

    def list(self, uri_prefix: str) -> list[ObjectInfo]:
        """Objects below a folder-like prefix, sorted by URI; empty when there are none."""
        loc = self._resolve(uri_prefix, prefix=True)
        if isinstance(loc, Path):
            return self._list_files(uri_prefix, loc)
        out: list[ObjectInfo] = []
        try:
            pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key)
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj.get("Key", "")
                    if key and not key.endswith("/"):
                        out.append(ObjectInfo(f"s3://{loc.bucket}/{key}", int(obj.get("Size", 0))))
        except Exception as e:
            raise self._s3_error(e, uri_prefix, loc) from e
        return sorted(out, key=lambda i: i.uri)

    def exists(self, uri: str) -> bool:
        loc = self._resolve(uri)
        if isinstance(loc, Path):
            return loc.is_file()
        try:
            self._s3().head_object(Bucket=loc.bucket, Key=loc.key)
            return True
        except Exception as e:
            err = self._s3_error(e, uri, loc)
            if isinstance(err, _NotFound) and not err.bucket_missing:
                return False
            raise err from e

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if it is missing (tests, `runyard up`); a no-op when it exists."""
        if not bucket or "/" in bucket or bucket in (".", ".."):
            raise ObjectStoreError(f"invalid bucket name {bucket!r}")
        if self._root is not None:
            (self._root / bucket).mkdir(parents=True, exist_ok=True)
            return
        client = self._s3()
        try:
            client.head_bucket(Bucket=bucket)
            return
        except Exception as e:
            err = self._s3_error(e, f"s3://{bucket}", _S3Loc(bucket, ""))
            if not isinstance(err, _NotFound):
                raise err from e
        try:
            client.create_bucket(Bucket=bucket)
        except Exception as e:
            raise self._s3_error(e, f"s3://{bucket}", _S3Loc(bucket, "")) from e

    # -- resolution ---------------------------------------------------------

    def _resolve(self, uri: str, prefix: bool = False) -> Path | _S3Loc:
        if uri.startswith("file:"):
            return _file_path(uri)
        if not uri.startswith("s3://"):
            scheme = uri.split("://", 1)[0] if "://" in uri else ""
            what = f"scheme {scheme!r}" if scheme else "no scheme"
            raise ObjectStoreError(f"{uri!r}: unsupported URI ({what}); use s3://bucket/key or file:///abs/path")
        bucket, key = _split_s3(uri)
        if prefix:
            key = _folder_prefix(key)
        elif not key or key.endswith("/"):
            raise ObjectStoreError(f"{uri}: names a folder, not an object (expected s3://bucket/key)")
        if self._root is None:
            return _S3Loc(bucket, key)
        if bucket in (".", "..") or "\\" in bucket:
            raise ObjectStoreError(f"{uri}: invalid bucket name {bucket!r}")
        path = self._root / bucket
        if key:
            path = path.joinpath(*_safe_rel(key.rstrip("/"), uri).parts)
        return path

    def _not_found(self, uri: str) -> ObjectStoreError:
        """A missing file: under a storage root, say whether the whole bucket is missing."""
        if uri.startswith("s3://") and self._root is not None:
            bucket, _ = _split_s3(uri)
            if not (self._root / bucket).is_dir():
                return _NotFound(
                    f"bucket {bucket!r} does not exist ({uri}; storage root {self._root})", bucket_missing=True
                )
        return _NotFound(f"no object at {uri}", bucket_missing=False)

    def _prefix_uri(self, uri_prefix: str) -> str:
        """The folder-like prefix as it appears at the start of listed URIs."""
        if uri_prefix.startswith("file:"):
            return _file_path(uri_prefix).as_uri().rstrip("/") + "/"
        bucket, key = _split_s3(uri_prefix)
        return f"s3://{bucket}/{_folder_prefix(key)}"

    # -- local files --------------------------------------------------------

    def _write_file(self, dest: Path, uri: str, write: Callable[[Any], object]) -> None:
        """Write via a temp file and rename, so readers never see half an object."""
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f"{_TMP_MARK}{uuid.uuid4().hex}-{dest.name}")
            try:
                with tmp.open("wb") as f:
                    write(f)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as e:
            raise ObjectStoreError(f"cannot write {uri}: {e.strerror or e}") from e

    def _list_files(self, uri_prefix: str, path: Path) -> builtins.list[ObjectInfo]:
        if uri_prefix.startswith("s3://") and self._root is not None:
            bucket, _ = _split_s3(uri_prefix)
            bucket_dir = self._root / bucket
            if not bucket_dir.is_dir():
                raise ObjectStoreError(f"bucket {bucket!r} does not exist ({uri_prefix}; storage root {self._root})")

            def to_uri(p: Path) -> str:
                return f"s3://{bucket}/{p.relative_to(bucket_dir).as_posix()}"
        else:

            def to_uri(p: Path) -> str:
                return p.as_uri()

        if not path.is_dir():
            return []
        return sorted((ObjectInfo(to_uri(p), p.stat().st_size) for p in _walk_files(path)), key=lambda i: i.uri)

    # -- S3 -----------------------------------------------------------------

    def _s3(self) -> S3Client:
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                session = boto3.session.Session()
                config = Config(
                    connect_timeout=5,
                    read_timeout=60,
                    retries={"max_attempts": 3, "mode": "standard"},
                    s3={"addressing_style": "path"} if self._endpoint else None,
                )
                self._client = session.client(
                    "s3",
                    endpoint_url=self._endpoint,
                    region_name=session.region_name or "us-east-1",
                    config=config,
                )
            return self._client

    def _s3_error(self, e: Exception, uri: str, loc: _S3Loc) -> ObjectStoreError:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = self._endpoint or "AWS S3"
        if isinstance(e, ObjectStoreError):
            return e
        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            return ObjectStoreError(
                f"no credentials for object storage at {where} ({uri}): set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY or an AWS profile"
            )
        if isinstance(e, ConnectionError):
            return ObjectStoreError(f"cannot reach object storage at {where} ({uri}): {e}")
        if isinstance(e, S3UploadFailedError):
            if "NoSuchBucket" in str(e):
                return _NotFound(f"bucket {loc.bucket!r} does not exist at {where} ({uri})", bucket_missing=True)
            return ObjectStoreError(f"upload to {uri} failed: {e}")
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            msg = str(e.response.get("Error", {}).get("Message", "")) or str(e)
            if code == "NoSuchBucket" or (code in ("404", "NotFound", "NoSuchKey") and not self._bucket_exists(loc)):
                return _NotFound(f"bucket {loc.bucket!r} does not exist at {where} ({uri})", bucket_missing=True)
            if code in ("404", "NotFound", "NoSuchKey"):
                return _NotFound(f"no object at {uri}", bucket_missing=False)
            if code in ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return ObjectStoreError(f"access denied to {uri} at {where}: {code} {msg}".rstrip())
            return ObjectStoreError(f"{uri}: {code or 'error'}: {msg}")
        return ObjectStoreError(f"{uri}: {type(e).__name__}: {e}")

    def _bucket_exists(self, loc: _S3Loc) -> bool:
        """Tells a missing bucket from a missing key, which a bare 404 does not."""
        try:
            self._s3().head_bucket(Bucket=loc.bucket)
            return True
        except Exception:
            return False

    # -- helpers ------------------------------------------------------------

    def _parallel(self, fn: Callable[[Any], None], jobs: builtins.list[Any]) -> None:
        if len(jobs) <= 1:
            for job in jobs:
                fn(job)
            return
        with ThreadPoolExecutor(max_workers=min(_TRANSFER_THREADS, len(jobs))) as pool:
            for future in [pool.submit(fn, job) for job in jobs]:
                future.result()


class _NotFound(ObjectStoreError):
    def __init__(self, message: str, bucket_missing: bool) -> None:
        super().__init__(message)
        self.bucket_missing = bucket_missing


def _walk_files(base: Path) -> Iterator[Path]:
    for dirpath, _dirnames, filenames in os.walk(base):
        for name in filenames:
            p = Path(dirpath) / name
            if _TMP_MARK not in name and p.is_file():
                yield p


def _walk_regular_files(base: Path, skipped: Callable[[Path], None]) -> Iterator[Path]:
    """Regular files under base, never through a link; each link met (file or folder) goes to `skipped`."""
    for dirpath, dirnames, filenames in os.walk(base):
        for name in sorted(dirnames):
            if os.path.islink(os.path.join(dirpath, name)):
                skipped(Path(dirpath) / name)  # os.walk does not descend into it
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                skipped(p)
            elif _TMP_MARK not in name and stat.S_ISREG(p.lstat().st_mode):
                yield p


def _copy(src: Any, dst: Any, progress: Progress | None) -> None:
    while chunk := src.read(_CHUNK):
        dst.write(chunk)
        if progress is not None:
            progress(len(chunk))
