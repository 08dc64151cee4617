"""Maps failures to gRPC status codes with messages a person can act on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from runyard.server.commands import AlreadyExists, NotFound
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
    if isinstance(exc, ManifestError):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid manifest: {exc}")
    if isinstance(exc, IllegalTransition | StaleAttempt):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, ValueError):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    raise exc


def page_size(requested: int, default: int = 100, maximum: int = 1000) -> int:
    return default if requested == 0 else min(requested, maximum)


def decode_page_token(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit():
        raise ValueError(f"page_token: {token!r} is not a token from a previous page")
    return int(token)
