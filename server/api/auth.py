"""Authentication and the coarse authorization of every RPC.

Every call but the health check and reflection must carry
``authorization: Bearer <secret>`` metadata. The interceptor hashes the
secret, looks the key up (see `runyard.server.credentials`), and then applies
the method's rule from `RULES`:

- ``USER``: any user or admin key. The servicer then keeps a user to their own
  account: another account's experiments and runs answer NOT_FOUND (exactly as
  an id that does not exist, so nothing leaks), list calls only list the
  caller's account, and creates act for the caller's account.
- ``ADMIN``: admin keys only (PERMISSION_DENIED for a user key).

Agent keys get PERMISSION_DENIED on every RPC: agents talk to the control
plane over NATS only, and their key is checked on each report by the ingest.
A method missing from `RULES` is refused for everybody, so a new RPC is closed
until someone decides who may call it.

The caller is handed to the servicer as a `Principal` in a context variable
(`current_principal()`), set only for the duration of that call's handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from runyard.server.api.errors import Context
from runyard.server.credentials import Credentials, Principal, is_admin
from runyard.server.domain.account import role_name
from runyard.v1 import common_pb2

__all__ = [
    "ADMIN",
    "RULES",
    "USER",
    "AuthInterceptor",
    "Principal",
    "account_scope",
    "current_principal",
    "is_admin",
    "require_account_access",
    "require_owner",
]

USER = "user"
ADMIN = "admin"

RULES: dict[str, str] = {
    "/runyard.v1.ExperimentService/UploadCode": USER,
    "/runyard.v1.ExperimentService/CreateExperiment": USER,
    "/runyard.v1.ExperimentService/GetExperiment": USER,
    "/runyard.v1.ExperimentService/ListExperiments": USER,
    "/runyard.v1.ExperimentService/CancelExperiment": USER,
    "/runyard.v1.ExperimentService/PauseExperiment": USER,
    "/runyard.v1.ExperimentService/ResumeExperiment": USER,
    "/runyard.v1.ExperimentService/WatchExperiment": USER,
    "/runyard.v1.RunService/GetRun": USER,
    "/runyard.v1.RunService/ListRuns": USER,
    "/runyard.v1.RunService/CancelRun": USER,
    "/runyard.v1.RunService/WatchRun": USER,
    "/runyard.v1.RunService/GetRunLogs": USER,
    "/runyard.v1.RunService/GetRunMetrics": USER,
    "/runyard.v1.UsageService/GetUsage": USER,
    "/runyard.v1.UsageService/ListRunUsage": USER,
    # A client needs the code upload limits before any submit.
    "/runyard.v1.AdminService/GetServerInfo": USER,
    "/runyard.v1.AdminService/WhoAmI": USER,
    "/runyard.v1.AdminService/RebuildProjections": ADMIN,
    "/runyard.v1.AdminService/ListAgents": ADMIN,
    "/runyard.v1.AdminService/CreateAccount": ADMIN,
    "/runyard.v1.AdminService/ListAccounts": ADMIN,
    "/runyard.v1.AdminService/SetQuota": ADMIN,
    "/runyard.v1.AdminService/SetAccountStorage": ADMIN,
    "/runyard.v1.AdminService/CreateApiKey": ADMIN,
    "/runyard.v1.AdminService/ListApiKeys": ADMIN,
    "/runyard.v1.AdminService/RevokeApiKey": ADMIN,
    "/runyard.v1.AdminService/SetExperimentPriority": ADMIN,
    "/runyard.v1.AdminService/DrainAgent": ADMIN,
}

#: Open to anybody: load balancers and grpcurl/buf curl must work without a key.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

_HOW_TO = (
    "send the metadata 'authorization: Bearer <key>' (runyard --api-key, RUNYARD_API_KEY, or `runyard up`, "
    "which sets one up); an admin creates keys with `runyard admin keys create ACCOUNT`"
)
MISSING_KEY = f"no API key: {_HOW_TO}"
UNKNOWN_KEY = f"the API key is not valid (unknown or revoked): {_HOW_TO}"

_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("runyard_principal", default=None)


def current_principal() -> Principal:
    """The caller of the RPC being handled; the interceptor always sets it before a servicer runs."""
    principal = _current.get()
    if principal is None:
        raise RuntimeError("no caller for this call: the auth interceptor is not installed")
    return principal


def account_scope() -> str:
    """The account a listing is limited to: the caller's own, or "" (every account) for an admin."""
    principal = current_principal()
    return "" if is_admin(principal) else principal.account_id


async def require_account_access(context: Context, account_id: str) -> None:
    """Abort PERMISSION_DENIED unless the caller is an admin or acts on its own account."""
    principal = current_principal()
    if is_admin(principal) or account_id == principal.account_id:
        return
    await context.abort(
        grpc.StatusCode.PERMISSION_DENIED,
        f"this API key belongs to account {principal.account_id!r}; it cannot act on account {account_id!r}",
    )


async def require_owner(context: Context, owner_account: str | None, kind: str, ident: str) -> None:
    """Abort NOT_FOUND unless the thing exists and the caller may see it.

    Another account's experiment or run answers exactly like a missing one, so
    a key learns nothing about what other accounts have.
    """
    principal = current_principal()
    if owner_account is not None and (is_admin(principal) or owner_account == principal.account_id):
        return
    await context.abort(grpc.StatusCode.NOT_FOUND, f"{kind} {ident} not found")


def bearer_secret(metadata: Any) -> str:
    """The secret of an 'authorization: Bearer <secret>' entry ("" when there is none)."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        scheme, _, secret = text.strip().partition(" ")
        if scheme.lower() == "bearer":
            return secret.strip()
    return ""


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, credentials: Credentials, rules: dict[str, str] | None = None) -> None:
        self._credentials = credentials
        self._rules = RULES if rules is None else rules

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],  # type: ignore[type-arg]
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:  # grpc.RpcMethodHandler, or None for a method this server does not have
        handler: Any = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        secret = bearer_secret(handler_call_details.invocation_metadata)  # type: ignore[attr-defined]
        if not secret:
            return _refuse(handler, grpc.StatusCode.UNAUTHENTICATED, MISSING_KEY)
        fresh, principal = self._credentials.cached(secret)
        if not fresh:
            principal = await asyncio.to_thread(self._credentials.principal, secret)
        if principal is None:
            return _refuse(handler, grpc.StatusCode.UNAUTHENTICATED, UNKNOWN_KEY)
        refusal = self._refusal(method, principal)
        if refusal:
            return _refuse(handler, grpc.StatusCode.PERMISSION_DENIED, refusal)
        return _as(handler, principal)

    def _refusal(self, method: str, principal: Principal) -> str:
        rule = self._rules.get(method)
        if rule is None:
            return f"{method} has no authorization rule on this server, so nobody may call it"
        if principal.role == common_pb2.ROLE_AGENT:
            return "agent keys only report over NATS; call the API with a user or admin key"
        if principal.role not in (common_pb2.ROLE_USER, common_pb2.ROLE_ADMIN):
            return f"an API key with role {role_name(principal.role)} may not call the API"
        if rule == ADMIN and not is_admin(principal):
            return (
                f"{method.rsplit('/', 1)[-1]} needs an admin key; this is a user key of account "
                f"{principal.account_id!r}"
            )
        return ""


def _refuse(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same shape as `handler` that ends the call with `code`."""

    async def unary(request: Any, context: Context) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    return _rebuild(handler, streaming if handler.response_streaming else unary)


def _as(handler: Any, principal: Principal) -> Any:
    """The same handler, run with `principal` as the current caller."""
    inner = _behavior(handler)

    async def unary(request: Any, context: Context) -> Any:
        token = _current.set(principal)
        try:
            return await inner(request, context)
        finally:
            _current.reset(token)

    async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
        token = _current.set(principal)
        try:
            async for response in inner(request, context):
                yield response
        finally:
            # A generator closed from another context (a cancelled stream) cannot reset here;
            # that context ends with the call anyway.
            with contextlib.suppress(ValueError):
                _current.reset(token)

    return _rebuild(handler, streaming if handler.response_streaming else unary)


def _behavior(handler: Any) -> Any:
    if handler.request_streaming:
        return handler.stream_stream if handler.response_streaming else handler.stream_unary
    return handler.unary_stream if handler.response_streaming else handler.unary_unary


def _rebuild(handler: Any, behavior: Any) -> Any:
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, **kwargs)
    return grpc.unary_unary_rpc_method_handler(behavior, **kwargs)
