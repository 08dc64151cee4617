"""Which storage an account may read and write: its granted prefixes, checked on decoded URIs.

Every account holds a set of storage prefixes (events on its stream, set by an
admin). A manifest's `data` and `results` and an experiment's `code_uri` must
lie inside one of them, or the submit is refused before anything is staged.
Checks run on the canonical form of runyard.storage_uri, never on the text as
written.

Defaults, chosen so that a new account can work at once and touches nobody
else's objects:

* an account gets ``s3://<account id>/`` (its own bucket) unless its creator
  names other prefixes; accounts created before grants existed get the same;
* uploaded code lives under ``<code prefix>/<account id>/`` (UploadCode puts it
  there), which each account may use as `code_uri` and nobody may name as
  `data` or `results`: the rest of the code prefix is other accounts' code;
* ``file://`` paths inside the storage root are the same objects as their
  ``s3://bucket/key`` spelling (the store maps one onto the other) and are
  checked as such; a ``file://`` path anywhere else needs a ``file:///dir/``
  grant by an admin.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from runyard.server.domain.errors import DomainError
from runyard.storage_uri import StorageUri, StorageUriError, parse_storage_uri

#: Grants per account: far above any real need, small enough to check every submit against all of them.
MAX_PREFIXES = 64
MAX_PREFIX_LENGTH = 1024


class StorageDenied(DomainError):
    """A URI outside the account's storage (PERMISSION_DENIED); the message names the field and the grants."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class BadStorageUri(DomainError, ValueError):
    """A URI that cannot be checked at all (INVALID_ARGUMENT); the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def default_storage_prefixes(account_id: str) -> tuple[str, ...]:
    """What an account may use when nobody said otherwise: its own bucket."""
    return (f"s3://{account_id}/",)


def parse_uri(field: str, uri: str) -> StorageUri:
    try:
        return parse_storage_uri(uri)
    except StorageUriError as e:
        raise BadStorageUri(field, str(e)) from None


def canonical_prefix(field: str, text: str) -> str:
    """A grant as stored: canonical, folder-like ('/' at the end), naming at least a bucket or a folder."""
    if len(text) > MAX_PREFIX_LENGTH:
        raise BadStorageUri(field, f"a prefix of {len(text)} characters is longer than {MAX_PREFIX_LENGTH}")
    uri = parse_uri(field, text)
    if uri.scheme == "file" and not uri.segments:
        raise BadStorageUri(field, "file:/// would grant the whole file system; name a folder")
    return uri.as_prefix


def canonical_prefixes(field: str, texts: Iterable[str]) -> tuple[str, ...]:
    """Grants canonical, without duplicates, in a stable (sorted) order; at most MAX_PREFIXES."""
    out = sorted({canonical_prefix(field, t) for t in texts})
    if len(out) > MAX_PREFIXES:
        raise BadStorageUri(field, f"{len(out)} prefixes; an account may hold at most {MAX_PREFIXES}")
    return tuple(out)


def path_segments(path: str) -> tuple[str, ...]:
    """An absolute local path (the storage root) as segments, for mapping file:// URIs into it."""
    return tuple(p for p in path.split("/") if p)


@dataclass(frozen=True)
class StorageAccess:
    """What one account may read and write; `check_*` raise StorageDenied or BadStorageUri."""

    account_id: str
    prefixes: tuple[str, ...]
    #: Where UploadCode keeps code packages (canonical), e.g. s3://runyard/code/.
    code_prefix: str
    #: The storage root's folder as path segments, when objects live in a folder (file:// maps into it).
    storage_root: tuple[str, ...] | None = None

    @property
    def own_code_prefix(self) -> str:
        return f"{self.code_prefix}{self.account_id}/"

    def check_data(self, field: str, uri: str) -> None:
        """`uri` (a manifest's data or results) lies inside a grant and outside the code packages."""
        target = self._target(field, uri)
        if target.within(parse_storage_uri(self.code_prefix)):
            raise StorageDenied(
                field, f"{uri} is inside {self.code_prefix}, where the server keeps uploaded code packages"
            )
        self._require_granted(field, uri, target)

    def check_code(self, field: str, uri: str) -> None:
        """`uri` is a code package UploadCode stored for this account, or lies inside one of its grants."""
        target = self._target(field, uri)
        own = parse_storage_uri(self.own_code_prefix)
        if target.within(own) and target.as_written.within(own):
            return
        if target.within(parse_storage_uri(self.code_prefix)):
            raise StorageDenied(
                field,
                f"{uri} is not a code package of account {self.account_id} (those are under "
                f"{self.own_code_prefix}; upload the code with UploadCode)",
            )
        self._require_granted(field, uri, target)

    def _target(self, field: str, uri: str) -> StorageUri:
        """The object `uri` names, with a file:// path inside the storage root spelled as s3://bucket/key."""
        parsed = parse_uri(field, uri)
        root = self.storage_root
        if parsed.scheme == "file" and root is not None and root[: len(parsed.segments)] == parsed.segments:
            # Even where a file:// grant covers it: a folder above the root holds every account's buckets.
            raise StorageDenied(field, f"{uri} holds the storage root, and so every account's buckets")
        if parsed.scheme == "file" and root is not None and parsed.segments[: len(root)] == root:
            rest = parsed.segments[len(root) :]
            try:
                # The file path is already decoded (and is what the store touches): no second decoding.
                spelled = str(StorageUri("s3", rest[0], rest[1:]))
                return replace(parse_storage_uri(spelled), written=None)
            except StorageUriError as e:
                raise BadStorageUri(field, f"{uri} is inside the storage root but names no bucket: {e}") from None
        return parsed

    def _require_granted(self, field: str, uri: str, target: StorageUri) -> None:
        grants = [parse_storage_uri(p) for p in self.prefixes]
        if all(any(form.within(g) for g in grants) for form in (target, target.as_written)):
            return
        allowed = ", ".join(self.prefixes) if self.prefixes else "none"
        raise StorageDenied(
            field,
            f"{uri} is outside the storage of account {self.account_id} (allowed prefixes: {allowed}; "
            "an admin grants more with `runyard admin storage`)",
        )


def granted_after(current: Sequence[str], allow: Iterable[str], revoke: Iterable[str]) -> tuple[str, ...]:
    """The grants after adding `allow` and removing `revoke` (both canonicalised first).

    Revoking what is not granted changes nothing (a retried call is harmless); the
    answer shows the grants as they now are.
    """
    added = canonical_prefixes("allow", allow)
    removed = set(canonical_prefixes("revoke", revoke))
    return canonical_prefixes("allow", (set(current) | set(added)) - removed)
