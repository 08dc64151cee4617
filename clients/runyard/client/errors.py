"""Errors of the SDK. Each one's message is a single line a person can act on.

The CLI prints ``error: <message>`` for any `ClientError` and exits 1, so a new
failure mode gets a good CLI message by raising one of these with a good text.
"""

from __future__ import annotations

import grpc

__all__ = ["ApiError", "ClientError", "CodeTooLarge", "ServerUnreachable"]


class ClientError(Exception):
    """Anything the user can fix or retry; never a bug in Runyard."""


class ApiError(ClientError):
    """The server answered with a gRPC error status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code.name}: {details}" if details else code.name)

    @classmethod
    def from_rpc(cls, e: grpc.RpcError) -> ApiError:
        code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (e.details() if isinstance(e, grpc.Call) else str(e)) or ""
        return cls(code, " ".join(details.split()))


class ServerUnreachable(ClientError):
    """No connection to the endpoint at all (nothing listening, wrong host, server down)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        super().__init__(
            f"cannot reach the Runyard server at {endpoint} "
            "(is `runyard up` running? set --endpoint or RUNYARD_ENDPOINT)"
        )


class CodeTooLarge(ClientError):
    """The code directory would be refused by the server's --max-code-bytes."""

    def __init__(self, code_dir: str, size_bytes: int, limit_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes
        super().__init__(
            f"code directory {code_dir} is {_mb(size_bytes)} MB, over the server's limit of "
            f"{_mb(limit_bytes)} MB (set by --max-code-bytes)"
        )


def _mb(n: int) -> str:
    """Binary megabytes, so the default limit of 100 MiB reads as "100 MB"."""
    value = n / (1024 * 1024)
    if value >= 100:
        return f"{value:.0f}"
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text if text != "0" else "<0.01"
