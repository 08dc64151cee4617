"""Event log append and replay rates on PostgreSQL and SQLite, against a raw insert.

For each backend (a fresh PostgreSQL database on 127.0.0.1:5432, a SQLite
file in a temporary folder) it measures, through the same engine:

- raw: one row into a plain table with the event log's columns (primary key
  only), one transaction per row; the floor any event log pays;
- append_single: `EventStore.append` of one event (version check, idempotency
  check, gap-free position, notification);
- append_batch: `EventStore.append` of 100 events at once (events/s);
- replay: `read_all` from position 0 in pages of 1000 (events/s).

Raw inserts and single appends run in alternating chunks so that disk and
checkpoint noise hits both alike. Goal: append_single / raw >= 0.5.

    .venv/bin/python bench/event_log.py [--single 3000] [--batches 200] [--backend postgresql sqlite]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Uuid,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runyard.server.store import ANY, EventStore, NewEvent
from tests.support.services import postgres_database

PAYLOAD = bytes(range(256)) * 2  # about the size of a RunMetricsReported batch
CHUNK = 250

raw_metadata = MetaData()
raw_events = Table(
    "bench_raw_events",
    raw_metadata,
    Column("position", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False),
    Column("stream_id", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("event_id", Uuid(), nullable=False),
    Column("type", String(200), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("correlation_id", String(200), nullable=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)


def _event() -> NewEvent:
    return NewEvent("runyard.v1.RunMetricsReported", PAYLOAD, uuid.uuid4(), "exp-bench")


def _timed(action: Callable[[int], None], start: int, count: int) -> float:
    began = time.perf_counter()
    for i in range(start, start + count):
        action(i)
    return time.perf_counter() - began


def measure(url: str, single: int, batches: int) -> dict[str, Any]:
    store = EventStore.open(url)
    try:
        raw_metadata.create_all(store.engine)  # the benchmark's own table, not the product schema

        def raw_insert(i: int) -> None:
            row = {
                "position": i,
                "stream_id": f"run-{i % 50}",
                "version": i,
                "event_id": uuid.uuid4(),
                "type": "runyard.v1.RunMetricsReported",
                "data": PAYLOAD,
                "correlation_id": "exp-bench",
                "recorded_at": datetime.now(UTC),
            }
            with store.engine.begin() as conn:
                conn.execute(raw_events.insert(), row)

        def append_one(i: int) -> None:
            store.append(f"run-{i % 50}", [_event()], ANY)

        def append_batch(i: int) -> None:
            store.append(f"batch-{i}", [_event() for _ in range(100)], 0)

        # Warm up pools, compiled caches and prepared statements.
        _timed(raw_insert, 1, 50)
        _timed(append_one, 1, 50)
        raw_s = single_s = 0.0
        done = 0
        while done < single:
            n = min(CHUNK, single - done)
            raw_s += _timed(raw_insert, 51 + done, n)
            single_s += _timed(append_one, 51 + done, n)
            done += n
        batch_s = _timed(append_batch, 0, batches)

        total = store.head_position()
        began = time.perf_counter()
        position = replayed = 0
        while True:
            page = store.read_all(position, 1000)
            if not page:
                break
            replayed += len(page)
            position = page[-1].position
        replay_s = time.perf_counter() - began

        raw_rate = single / raw_s
        single_rate = single / single_s
        return {
            "raw_insert_per_s": round(raw_rate),
            "append_single_events_per_s": round(single_rate),
            "append_single_vs_raw": round(single_rate / raw_rate, 3),
            "append_batch100_events_per_s": round(batches * 100 / batch_s),
            "replay_read_all_events_per_s": round(replayed / replay_s),
            "replayed_events": replayed,
            "log_events": total,
        }
    finally:
        store.close()


@contextmanager
def _sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="runyard-bench-") as folder:
        yield f"sqlite:///{folder}/events.db"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=3000, help="raw inserts and single-event appends, each")
    parser.add_argument("--batches", type=int, default=200, help="100-event appends")
    parser.add_argument("--backend", nargs="+", choices=["postgresql", "sqlite"], default=["postgresql", "sqlite"])
    args = parser.parse_args()
    result: dict[str, Any] = {"benchmark": "event_log", "goal_append_single_vs_raw": 0.5}
    for backend in args.backend:
        with postgres_database() if backend == "postgresql" else _sqlite_url() as url:
            result[backend] = measure(url, args.single, args.batches)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
