"""Fixtures shared by the tests: real services, one per test, and the event log in memory for handler tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runyard.server.store import InMemoryEventStore
from tests.containers import container_engine, python_image, pytorch_image
from tests.support.services import AWS_TEST_ENV, MotoS3, NatsServer, postgres_database

# The container fixtures (a session's own Podman service and the framework images) live in tests/containers.py.
__all__ = ["container_engine", "python_image", "pytorch_image"]


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def memory_event_store() -> Iterator[InMemoryEventStore]:
    """An empty event log in memory (the `EventLog` protocol, contract-tested like PostgreSQL and SQLite).

    For handler tests that need the log's rules but no database: a test or a
    conftest switches its `event_store` to it with
    `def event_store(memory_event_store): return memory_event_store`.
    """
    store = InMemoryEventStore()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoS3]:
    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    server = MotoS3().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _isolated_runyard_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's own Runyard config or `runyard up` state."""
    monkeypatch.setenv("RUNYARD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RUNYARD_CONFIG", str(tmp_path / "config.yaml"))
    for key in list(os.environ):
        if key in ("RUNYARD_ENDPOINT",):
            monkeypatch.delenv(key)
