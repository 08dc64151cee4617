"""The submit's storage check: a manifest's data and results, and its code_uri, against the account's grants.

Runs before anything is stored or staged, on the Account aggregate's own
stream (the write side: a grant or revoke counts from the moment it is
appended, on every replica). The rules are the domain's
(runyard.server.domain.storage); this module only gathers what they need.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import grpc

from runyard.objectstore import ObjectStore
from runyard.server.commands import Commands, NotFound
from runyard.server.config import ServerConfig
from runyard.server.domain.errors import ManifestError
from runyard.server.domain.manifest import parse_manifest
from runyard.server.domain.storage import (
    BadStorageUri,
    StorageAccess,
    StorageDenied,
    canonical_prefix,
    path_segments,
)

Refusal = tuple[grpc.StatusCode, str]


def storage_root_segments(storage_root: str | None) -> tuple[str, ...] | None:
    """The storage root's folder (symlinks resolved, as the object store resolves it) as path segments."""
    if not storage_root:
        return None
    path = Path(unquote(urlsplit(storage_root).path)) if storage_root.startswith("file:") else Path(storage_root)
    return path_segments(path.resolve().as_posix())


class SubmitStorageCheck:
    """Whether an account may use the storage a submit names, and whether its code package exists."""

    def __init__(self, config: ServerConfig, commands: Commands, objects: ObjectStore) -> None:
        self._commands = commands
        self._objects = objects
        self._code_prefix = canonical_prefix("code_uri_prefix", config.code_uri_prefix)
        self._root = storage_root_segments(config.storage_root)

    def access(self, account_id: str) -> StorageAccess:
        account = self._commands.load_account(account_id)
        return StorageAccess(account_id, account.storage_prefixes, self._code_prefix, self._root)

    def refusal(self, account_id: str, manifest_yaml: str, code_uri: str) -> Refusal | None:
        """Why the submit may not use this storage (PERMISSION_DENIED, INVALID_ARGUMENT); None when it may."""
        try:
            access = self.access(account_id)
            if code_uri:
                access.check_code("code_uri", code_uri)
            try:
                manifest = parse_manifest(manifest_yaml)
            except (ManifestError, ValueError):
                manifest = None  # creating it says what is wrong with the manifest
            if manifest is not None:
                if manifest.data:
                    access.check_data("data", manifest.data)
                access.check_data("results", manifest.results)
        except NotFound as e:
            return grpc.StatusCode.PERMISSION_DENIED, f"{e}: its storage cannot be checked"
        except StorageDenied as e:
            return grpc.StatusCode.PERMISSION_DENIED, str(e)
        except BadStorageUri as e:
            return grpc.StatusCode.INVALID_ARGUMENT, str(e)
        if code_uri and not self._exists(code_uri):
            return (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"code_uri: {code_uri} does not exist (upload it with UploadCode first)",
            )
        return None

    def code_uri(self, account_id: str, sha256: str) -> str:
        """Where UploadCode stores a package of this account: under its own folder of the code prefix."""
        return f"{self._code_prefix}{account_id}/{sha256}.tar.gz"

    def _exists(self, uri: str) -> bool:
        try:
            return bool(self._objects.exists(uri))
        except Exception:
            return False
