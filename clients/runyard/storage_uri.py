"""Storage URIs decoded into one canonical form, so that a check on a URI is a check on what it names.

Who may read and write where is decided on this form (the control plane at
submit, the agent again before it stages or uploads): the same object can be
spelled many ways (``S3://Mine/a``, ``file:///root/%6dine/a``, ``a/./b``), and a
check on the text as written is a check that a spelling can get past.

The rules, chosen so that what is checked is exactly what the object store
(runyard.objectstore) then touches:

* Two schemes, ``s3://bucket/key`` and ``file:///abs/path``; the scheme and the
  bucket are case-insensitive (S3 bucket names are lowercase anyway).
* Every path segment is percent-decoded once (as the store does for ``file://``).
  A segment that is empty (``a//b``), ``.`` or ``..`` (also when spelled
  ``%2e%2e``), or holds ``/``, ``\\`` or a control character once decoded, is
  refused rather than resolved: no spelling can climb out of a folder, and no
  two spellings of different objects compare equal.
* ``file://`` URIs name a local path (no host, no ``?query`` or ``#fragment``,
  which the store would silently drop).
* S3 never decodes a key, so an ``s3://`` URI is allowed only when both its
  decoded key and its key as written lie inside a grant (see `as_written`).
* A prefix matches on whole segments: ``s3://a/b`` covers ``s3://a/b`` and
  ``s3://a/b/c``, never ``s3://a/bc``.

Pure code with no I/O, shared by the server's domain and the agent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit

__all__ = ["StorageUri", "StorageUriError", "parse_storage_uri"]

#: S3's rules for bucket names (3-63 in AWS; shorter ones are fine for MinIO and the storage root), plus '_'.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class StorageUriError(ValueError):
    """A URI that names no object unambiguously; the message says what is wrong with it."""


@dataclass(frozen=True)
class StorageUri:
    """A decoded storage URI: scheme, bucket (s3 only) and path segments."""

    scheme: str
    bucket: str
    segments: tuple[str, ...]
    #: The key's segments as written, before decoding: what S3 itself sees (it never decodes a key).
    written: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def as_written(self) -> StorageUri:
        """The object an S3 store touches for this URI: the key exactly as written (file:// paths are decoded)."""
        return self if self.written is None else replace(self, segments=self.written, written=None)

    def __str__(self) -> str:
        """The canonical spelling; it parses back to this same URI ('%', '?' and '#' stay encoded)."""
        path = "/".join(_encode(s) for s in self.segments)
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{path}" if path else f"s3://{self.bucket}/"
        return f"file:///{path}"

    @property
    def as_prefix(self) -> str:
        """The folder-like spelling, ending in '/' (how grants are stored and shown)."""
        text = str(self)
        return text if text.endswith("/") else text + "/"

    def within(self, prefix: StorageUri) -> bool:
        """Whether this URI lies inside `prefix`, on whole segments."""
        n = len(prefix.segments)
        return (
            self.scheme == prefix.scheme
            and self.bucket == prefix.bucket
            and len(self.segments) >= n
            and self.segments[:n] == prefix.segments
        )


def parse_storage_uri(uri: str) -> StorageUri:
    """Decode `uri` (see the module docstring); StorageUriError says why it cannot be used."""
    if not uri:
        raise StorageUriError("is empty")
    if _CONTROL.search(uri) or "\\" in uri:
        raise StorageUriError(f"{uri!r} holds a control character or a backslash")
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("s3", "file"):
        raise StorageUriError(f"{uri!r} is not an s3://bucket/key or file:///abs/path URI")
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        bucket = bucket.lower()
        if not _BUCKET.match(bucket) or bucket in (".", ".."):
            raise StorageUriError(f"{uri!r} needs a bucket name of lowercase letters, digits, '.', '-' or '_'")
        written = tuple(key[:-1].split("/") if key.endswith("/") else key.split("/")) if key else ()
        return StorageUri("s3", bucket, _segments(key, uri), written)
    parts = urlsplit("file://" + rest)
    if parts.netloc not in ("", "localhost"):
        raise StorageUriError(f"{uri!r}: file URIs name a local path (file:///abs/path), not host {parts.netloc!r}")
    if parts.query or parts.fragment or "?" in rest or "#" in rest:
        raise StorageUriError(f"{uri!r}: a file URI has no '?' or '#' part (write them as %3F and %23)")
    if not parts.path.startswith("/"):
        raise StorageUriError(f"{uri!r}: file URIs need an absolute path (file:///abs/path)")
    return StorageUri("file", "", _segments(parts.path[1:], uri))


def _encode(segment: str) -> str:
    return segment.replace("%", "%25").replace("?", "%3F").replace("#", "%23")


def _segments(path: str, uri: str) -> tuple[str, ...]:
    """Decoded segments of a path without its leading '/'; one trailing '/' (a folder) is allowed."""
    if path.endswith("/"):
        path = path[:-1]
    if not path:
        return ()
    out = []
    for raw in path.split("/"):
        try:
            seg = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise StorageUriError(f"{uri!r}: segment {raw!r} is not percent-encoded UTF-8") from None
        if seg in ("", ".", ".."):
            what = "an empty segment ('//')" if not seg else f"a {seg!r} segment"
            raise StorageUriError(f"{uri!r} holds {what}; write the path without it")
        if "/" in seg or "\\" in seg or _CONTROL.search(seg):
            raise StorageUriError(f"{uri!r}: segment {raw!r} decodes to a '/', '\\' or a control character")
        out.append(seg)
    return tuple(out)
