"""Sending an API key with every call: ``authorization: Bearer <key>`` metadata.

A client interceptor rather than call credentials, because call credentials
need a secure channel and the embedded stack (and most in-cluster traffic
behind a TLS-terminating proxy) is plain gRPC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import grpc

__all__ = ["BearerAuth", "tls_credentials", "with_api_key"]


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: Any


class BearerAuth(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds the key to the metadata of every call on the channel it wraps."""

    def __init__(self, api_key: str) -> None:
        self._entry = ("authorization", f"Bearer {api_key}")

    def _details(self, details: Any) -> _CallDetails:
        metadata = [m for m in (details.metadata or ()) if m[0].lower() != "authorization"]
        metadata.append(self._entry)
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Iterator[Any]
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Iterator[Any]
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


def with_api_key(channel: grpc.Channel, api_key: str | None) -> grpc.Channel:
    """`channel` whose calls carry `api_key` (the channel itself when there is no key)."""
    if not api_key:
        return channel
    return grpc.intercept_channel(channel, BearerAuth(api_key))


def tls_credentials(ca_file: str | None) -> grpc.ChannelCredentials | None:
    """TLS channel credentials trusting the CA certificate in `ca_file` (PEM); None for plain gRPC."""
    if not ca_file:
        return None
    from pathlib import Path

    from runyard.client.errors import ClientError

    try:
        pem = Path(ca_file).expanduser().read_bytes()
    except OSError as e:
        raise ClientError(
            f"cannot read the CA certificate {ca_file} (--tls-ca, RUNYARD_TLS_CA): {e.strerror}"
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ClientError(f"{ca_file} (--tls-ca, RUNYARD_TLS_CA) holds no PEM certificate")
    return grpc.ssl_channel_credentials(root_certificates=pem)
