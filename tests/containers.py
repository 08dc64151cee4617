"""Fixtures of the container tests: a Podman API service of the session's own and the framework images.

The service is the session's, on a socket in a temporary folder, so no test depends on
(or disturbs) an engine the machine runs; its storage is the host's, so images built
once (`make test` builds them first, scripts/images.sh) are found here up to date by
their build key in seconds. Registered in tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runyard.agent.engine import connect, start_podman_service
from runyard.agent.images import build_image


@pytest.fixture(scope="session")
def container_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a `podman system service` started for this session (stopped at its end)."""
    service = start_podman_service(tmp_path_factory.mktemp("podman"))
    try:
        yield service.url
    finally:
        service.stop()


def _ensure_image(url: str, framework: str, version: str) -> str:
    client = connect(url, timeout_s=1800)
    try:
        return build_image(client, framework, version).reference
    finally:
        client.close()


@pytest.fixture(scope="session")
def python_image(container_engine: str) -> str:
    """localhost/runyard/python:3.11 (Debian's python3 + the runyard helper), built if missing."""
    return _ensure_image(container_engine, "python", "3.11")


@pytest.fixture(scope="session")
def pytorch_image(container_engine: str) -> str:
    """localhost/runyard/pytorch:2.13 (+ torch 2.13, scikit-learn, numpy), built if missing."""
    return _ensure_image(container_engine, "pytorch", "2.13")
