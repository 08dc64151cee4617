"""The submit's storage check: a manifest's data and results, and its code_uri, against the account's grants.

Runs before anything is stored or staged, on the Account aggregate's own
stream (the write side: a grant or revoke counts from the moment it is
appended, on every replica). The rules are the domain's
(runyard.server.domain.storage); this module only gathers what they need and
says why a submit is refused (PermissionDenied, InvalidArgument).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from runyard.objectstore import ObjectStore
from runyard.server.app.aggregates import ACCOUNT, load
from runyard.server.app.errors import InvalidArgument, NotFound, PermissionDenied
from runyard.server.app.unit_of_work import UnitOfWork
from runyard.server.config import ServerConfig
from runyard.server.domain.manifest import Manifest
from runyard.server.domain.storage import (
    BadStorageUri,
    StorageAccess,
    StorageDenied,
    canonical_prefix,
    path_segments,
)


def storage_root_segments(storage_root: str | None) -> tuple[str, ...] | None:
    """The storage root's folder (symlinks resolved, as the object store resolves it) as path segments."""
    if not storage_root:
        return None
    path = Path(unquote(urlsplit(storage_root).path)) if storage_root.startswith("file:") else Path(storage_root)
    return path_segments(path.resolve().as_posix())


class SubmitStorageCheck:
    """Whether an account may use the storage a submit names, and whether its code package exists."""

    def __init__(self, config: ServerConfig, objects: ObjectStore) -> None:
        self._objects = objects
        self._code_prefix = canonical_prefix("code_uri_prefix", config.code_uri_prefix)
        self._root = storage_root_segments(config.storage_root)

    def access(self, uow: UnitOfWork, account_id: str) -> StorageAccess:
        account = load(uow, ACCOUNT, account_id)
        return StorageAccess(account_id, account.storage_prefixes, self._code_prefix, self._root)

    def check(self, uow: UnitOfWork, account_id: str, manifest: Manifest | None, code_uri: str) -> None:
        """Refuse a submit that may not use this storage (PermissionDenied, InvalidArgument).

        `manifest` None: it did not parse, and creating it says what is wrong with it.
        """
        try:
            access = self.access(uow, account_id)
            if code_uri:
                access.check_code("code_uri", code_uri)
            if manifest is not None:
                if manifest.data:
                    access.check_data("data", manifest.data)
                access.check_data("results", manifest.results)
        except NotFound as e:
            raise PermissionDenied(f"{e}: its storage cannot be checked") from None
        except StorageDenied as e:
            raise PermissionDenied(str(e)) from None
        except BadStorageUri as e:
            raise InvalidArgument(str(e)) from None
        if code_uri and not self._exists(code_uri):
            raise InvalidArgument(f"code_uri: {code_uri} does not exist (upload it with UploadCode first)")

    def code_uri(self, account_id: str, sha256: str) -> str:
        """Where UploadCode stores a package of this account: under its own folder of the code prefix."""
        return f"{self._code_prefix}{account_id}/{sha256}.tar.gz"

    def _exists(self, uri: str) -> bool:
        try:
            return bool(self._objects.exists(uri))
        except Exception:
            return False
