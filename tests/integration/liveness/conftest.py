"""A live stack for liveness tests: PostgreSQL, a private NATS the test may stop, file storage, real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import NatsServer
from tests.support.stack import Stack

LEASE_S = 8


@pytest.fixture
def stack(tmp_path: Path, pg_url: str, nats_server: NatsServer) -> Iterator[Stack]:
    s = Stack(
        root=tmp_path,
        database_url=pg_url,
        nats_url=nats_server.url,
        storage_root=(tmp_path / "objects").as_uri(),
        # Short leases, so losses are settled in seconds (set where any replica reads it: the environment).
        extra_env={"RUNYARD_ATTEMPT_LEASE": str(LEASE_S)},
    )
    try:
        yield s
    finally:
        s.stop()
