"""A live stack for scheduling tests: PostgreSQL, a private NATS, file storage, agents with declared GPUs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import NatsServer
from tests.support.stack import Stack


@pytest.fixture
def stack(tmp_path: Path, pg_url: str, nats_server: NatsServer) -> Iterator[Stack]:
    s = Stack(
        root=tmp_path,
        database_url=pg_url,
        nats_url=nats_server.url,
        storage_root=(tmp_path / "objects").as_uri(),
    )
    try:
        yield s
    finally:
        s.stop()
