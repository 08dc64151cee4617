"""The API's edge: every request is checked once here, before any servicer sees it.

Callers may send any bytes. Rather than thirty checks scattered over the
servicers, one interceptor, generic over the request's descriptor:

- request bytes that do not decode (invalid UTF-8 in a string field, a
  truncated message) answer INVALID_ARGUMENT, not INTERNAL with a parser's
  exception;
- every string field, however deeply nested, must be text the backends can
  store (no NUL, no lone surrogate) and within its length (ids 256
  characters, tokens and cursors 512, a manifest 512 KiB, anything else
  4 KiB); every repeated field at most 10,000 items. The error names the field;
- error messages are cut to fit gRPC's metadata limit (the status message
  travels percent-encoded in the trailers, which a default client caps at
  8 KiB), saying that they were cut;
- an exception a servicer did not turn into a status is logged with its
  traceback and answered INTERNAL with an error id, never with the
  exception's name or text.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf.message import Message

from runyard.server.api.errors import Context
from runyard.server.domain.manifest_limits import MAX_MANIFEST_BYTES, unstorable

log = structlog.get_logger(__name__)

#: Only our own API is checked; health and reflection are grpc's.
CHECKED_PREFIX = "/runyard.v1."
MAX_ID_CHARS = 256
MAX_TOKEN_CHARS = 512
MAX_TEXT_CHARS = 4096
MAX_REPEATED = 10_000
#: Characters by field name; ids (`id`, `*_id`) get MAX_ID_CHARS, anything else MAX_TEXT_CHARS.
FIELD_MAX_CHARS = {
    "manifest_yaml": MAX_MANIFEST_BYTES,
    "page_token": MAX_TOKEN_CHARS,
    "cursor": MAX_TOKEN_CHARS,
    "code_uri": MAX_TEXT_CHARS,
}
#: Bytes of a status message once percent-encoded: well below the 8 KiB a default client accepts in trailers.
MAX_ERROR_BYTES = 2048


class Undecodable:
    """Stands for a request whose bytes did not parse; the handler answers INVALID_ARGUMENT."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def max_chars(name: str) -> int:
    if name in FIELD_MAX_CHARS:
        return FIELD_MAX_CHARS[name]
    if name == "id" or name.endswith("_id"):
        return MAX_ID_CHARS
    return MAX_TEXT_CHARS


def request_problem(message: Message, prefix: str = "") -> str | None:
    """Why the request cannot be taken, naming the field ("experiment_id: ..."), or None."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        repeated = field.is_repeated
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            items: list[Any] = [*value.keys(), *value.values()]
        else:
            items = list(value) if repeated else [value]
        if len(items) > MAX_REPEATED:
            return f"{path}: has {len(items)} items; at most {MAX_REPEATED}"
        for i, item in enumerate(items):
            at = f"{path}[{i}]" if len(items) > 1 or repeated else path
            if isinstance(item, str):
                problem = text_problem(field.name, item)
                if problem is not None:
                    return f"{at}: {problem}"
            elif isinstance(item, Message):
                problem = request_problem(item, f"{at}.")
                if problem is not None:
                    return problem
    return None


def text_problem(name: str, text: str) -> str | None:
    limit = max_chars(name)
    if len(text) > limit:
        return f"is {len(text)} characters long; at most {limit}"
    return unstorable(text)


def cap_message(text: str, limit: int = MAX_ERROR_BYTES) -> str:
    """The message cut to `limit` bytes as gRPC percent-encodes it in trailers, saying so when cut."""
    used = 0
    for i, ch in enumerate(text):
        raw = ch.encode("utf-8", "replace")
        used += sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in raw)
        if used > limit:
            return f"{text[:i]}... (message cut: {len(text) - i} more characters)"
    return text


class _CappedContext:
    """The servicer's context, with every status message it sets cut to fit gRPC's limits."""

    def __init__(self, inner: Context) -> None:
        self._inner = inner

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> Any:
        await self._inner.abort(code, cap_message(details), trailing_metadata)

    def set_details(self, details: str) -> None:
        self._inner.set_details(cap_message(details))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class EdgeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],  # type: ignore[type-arg]
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or not method.startswith(CHECKED_PREFIX):
            return handler
        return _guarded(handler, method)


def _decoder(inner: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        if inner is None:
            return data
        try:
            return inner(data)
        except Exception as exc:  # the parser's own error says which bytes; the caller gets a clear status
            return Undecodable(f"not a valid protobuf message: {exc}")

    return decode


async def _check(request: Any, context: Context) -> None:
    if isinstance(request, Undecodable):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            cap_message(f"request: cannot be decoded ({request.reason}); string fields must be valid UTF-8"),
        )
    if isinstance(request, Message):
        problem = request_problem(request)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, cap_message(problem))


async def _fail(context: Context, method: str, exc: Exception) -> None:
    error_id = uuid.uuid4().hex[:12]
    log.error("unhandled error in an RPC", method=method, error_id=error_id, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL, f"the server failed on this request; its log names the cause as error {error_id}"
    )


def _guarded(handler: Any, method: str) -> Any:
    kwargs = {
        "request_deserializer": _decoder(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming:
        inner = handler.stream_stream if handler.response_streaming else handler.stream_unary

        async def checked(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async for request in requests:
                await _check(request, context)
                yield request

        if handler.response_streaming:

            async def stream_stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
                try:
                    async for response in inner(checked(requests, context), _CappedContext(context)):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _fail(context, method, exc)

            return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)

        async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
            try:
                return await inner(checked(requests, context), _CappedContext(context))
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _fail(context, method, exc)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)

    if handler.response_streaming:
        inner_stream = handler.unary_stream

        async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                await _check(request, context)
                async for response in inner_stream(request, _CappedContext(context)):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _fail(context, method, exc)

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)

    inner_unary = handler.unary_unary

    async def unary_unary(request: Any, context: Context) -> Any:
        try:
            await _check(request, context)
            return await inner_unary(request, _CappedContext(context))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _fail(context, method, exc)

    return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
