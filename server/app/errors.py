"""Why a command was refused, in the product's words; the adapters map each to a gRPC status code.

Domain refusals (`runyard.server.domain.errors`: IllegalTransition, ManifestError, ...)
pass through unchanged; these are the application's own.
"""

from __future__ import annotations


class NotFound(Exception):
    """An id names nothing in the log (NOT_FOUND)."""

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident} not found")
        self.kind = kind
        self.ident = ident


class AlreadyExists(Exception):
    """A create names an id that is taken (ALREADY_EXISTS)."""

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident} already exists")
        self.kind = kind
        self.ident = ident


class Refused(Exception):
    """A submit that may not be taken; the subclass says which status code a caller gets."""


class PermissionDenied(Refused):
    """The account may not use what the submit names (PERMISSION_DENIED)."""


class InvalidArgument(Refused):
    """A field names what can never be had (INVALID_ARGUMENT; the message names the field)."""


class FailedPrecondition(Refused):
    """The cluster as it stands could never hold the runs (FAILED_PRECONDITION)."""


class LimitExceeded(Refused):
    """The account's plan or queued-runs cap refuses it (RESOURCE_EXHAUSTED; the message names the limit)."""
