"""Which listen addresses may serve plain gRPC (pure; the startup refusal is tested on a real process)."""

from __future__ import annotations

import pytest

from runyard.server.config import ServerConfig, is_loopback


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.0.1:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.0.0.7:50051", False),
        ("runyard.example.com:443", False),
    ],
)
def test_only_loopback_counts_as_loopback(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_plaintext_off_loopback_needs_tls_or_the_explicit_opt_out() -> None:
    with pytest.raises(ValueError, match="refusing to serve plaintext"):
        ServerConfig(listen="0.0.0.0:50051").check()
    ServerConfig(listen="0.0.0.0:50051", allow_plaintext=True).check()
    ServerConfig(listen="0.0.0.0:50051", tls_cert_file="c.pem", tls_key_file="k.pem").check()
    ServerConfig(listen="127.0.0.1:0").check()
    with pytest.raises(ValueError, match="--tls-key"):
        ServerConfig(listen="127.0.0.1:0", tls_cert_file="c.pem").check()
