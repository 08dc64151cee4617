"""Maps failures to gRPC status codes with messages a person can act on: the one place that does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from runyard.server.app.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    PermissionDenied,
)
from runyard.server.domain.errors import IllegalTransition, ManifestError, StaleAttempt

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext


async def abort(context: Context, exc: BaseException) -> NoReturn:
    if isinstance(exc, NotFound):
        await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, AlreadyExists):
        await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
    if isinstance(exc, PermissionDenied):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    if isinstance(exc, InvalidArgument):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, FailedPrecondition):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, LimitExceeded):
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, ManifestError):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid manifest: {exc}")
    if isinstance(exc, IllegalTransition | StaleAttempt):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, ValueError):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    raise exc


def page_size(requested: int, default: int = 100, maximum: int = 1000) -> int:
    return default if requested == 0 else min(requested, maximum)


#: Tokens and cursors are log positions: PostgreSQL bigints.
MAX_POSITION = 2**63 - 1


def decode_position(text: str, field: str, what: str) -> int:
    """A log position written by this server ("" is 0); ValueError naming `field` for anything else.

    ASCII digits only (str.isdigit also takes "²") and within a bigint, so that a
    forged token is refused here and never reaches the database as an out-of-range number.
    """
    if not text:
        return 0
    if len(text) > 19 or not (text.isascii() and text.isdigit()) or int(text) > MAX_POSITION:
        shown = text if len(text) <= 40 else f"{text[:40]}..."
        raise ValueError(f"{field}: {shown!r} is not {what}")
    return int(text)


def decode_page_token(token: str) -> int:
    return decode_position(token, "page_token", "a token from a previous page")
