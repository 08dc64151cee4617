"""An append's work on PostgreSQL does not grow with the log, on a connection that first appended to an empty log.

runyard_append's lookups (event ids, the stream's version, the head) have
indexes; PL/pgSQL caches their plans per session, and plans made while the
log was empty scanned the whole table ever after (revision 0007). Counted
in buffers, not seconds: the figure does not depend on the machine's load.
"""

from __future__ import annotations

import re
import uuid

import pytest
from sqlalchemy import text

from runyard.server.store import NO_STREAM, EventStore
from tests.support.databases import fresh_postgres_database

from .conftest import new_event

pytestmark = pytest.mark.integration

_EXPLAIN = text(
    "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM runyard_append("
    "'probe', NULL, ARRAY[CAST(:id AS uuid)], ARRAY['runyard.v1.Test'], ARRAY['\\x00'::bytea], ARRAY['c'], now())"
)


def _buffers(store: EventStore) -> int:
    with store.engine.connect() as conn, conn.begin() as tx:
        plan = [row[0] for row in conn.execute(_EXPLAIN, {"id": str(uuid.uuid4())})]
        tx.rollback()
    found = re.search(r"shared hit=(\d+)", "\n".join(plan))
    assert found, plan
    return int(found.group(1))


def test_an_append_reads_a_few_index_pages_however_long_the_log() -> None:
    with fresh_postgres_database() as url:
        store = EventStore.open(url, pool_size=1, max_overflow=0)  # one session: its cached plans are the ones used
        try:
            store.append("first", [new_event()], NO_STREAM)  # plans made on an empty log
            payload = bytes(range(256)) * 2
            touched = []
            for i in range(50):
                store.append(f"grow-{i}", [new_event(data=payload) for _ in range(100)], NO_STREAM)
                if i in (9, 49):
                    touched.append(_buffers(store))
            assert store.head_position() == 5001
            # Index lookups touch the same handful of pages at 1,000 and 5,000 events (a level more at most);
            # scans of the log touched about 110 pages more at 5,000 (revision 0005's plans).
            at_1000, at_5000 = touched
            assert at_5000 <= at_1000 + 5, touched
        finally:
            store.close()
