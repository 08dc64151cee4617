"""Event log append and replay rates, side by side with a raw insert and pyeventsourcing.

For each backend (a fresh PostgreSQL database on 127.0.0.1:5432, a SQLite
file in a temporary folder) it measures, through the same engine:

- raw_insert: one row into a plain table with the event log's columns
  (primary key only), one SQLAlchemy transaction per row; the floor any
  event log pays;
- append_single: `EventStore.append` of one event (version check, idempotency
  check, gap-free position, notification);
- raw_batch100: 100 such rows in one transaction (SQLAlchemy executemany);
- append_batch100: `EventStore.append` of 100 events at once (events/s);
- replay: `read_all` from position 0 in pages of 1000 (events/s).

On PostgreSQL also:

- pyeventsourcing: the same events (same payload, 50 streams for single
  events, a new stream per 100-event batch) through pyeventsourcing's
  PostgreSQL application recorder (`insert_events`: optimistic concurrency
  per aggregate, a gap-free notification id), pinned to PYEVENTSOURCING, in its
  own venv `.bench/eventsourcing-venv` (git-ignored, created on first use,
  the way bench/metrics_ingest.py installs MLflow), on its own database of
  the same server;
- writers: 1 and then 4 processes appending single events, each to its own
  stream with an expected version, all at once (events/s over the wall time
  from the first start to the last end); the log is then checked for a gap
  or a duplicate position.

Everything runs in rounds that alternate the contenders, so that disk,
checkpoint and neighbour noise hits all alike. The machine is shared: the
JSON says the load (`uptime`) before and after.

    .venv/bin/python bench/event_log.py [--single 2000] [--batches 100] [--writer-events 1000]
                                        [--rounds 4] [--backend postgresql sqlite]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
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
    make_url,
    text,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runyard.server.store import ANY, EventStore, NewEvent
from tests.support.services import postgres_database

REPO = Path(__file__).resolve().parent.parent
PAYLOAD = bytes(range(256)) * 2  # about the size of a RunMetricsReported batch
EVENT_TYPE = "runyard.v1.RunMetricsReported"
PYEVENTSOURCING = "eventsourcing==9.5.6"
PEER_VENV = REPO / ".bench" / "eventsourcing-venv"
GOALS = {
    "append_single_vs_raw": 0.8,
    "append_single_vs_pyeventsourcing": 1.3,
    "append_batch100_vs_raw_batch100": 0.7,
    "four_writers_vs_one": 2.0,
}

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

# Runs in the peer's venv: argv = single, batches; prints the seconds each part took.
PEER_SCRIPT = """
import json, os, sys, time, uuid
from eventsourcing.application import Application
from eventsourcing.persistence import StoredEvent

single, batches = int(sys.argv[1]), int(sys.argv[2])
payload = bytes(range(256)) * 2
app = Application()
recorder = app.recorder
streams = [uuid.uuid4() for _ in range(50)]
versions = dict.fromkeys(streams, 0)

def one(i):
    stream = streams[i % 50]
    versions[stream] += 1
    recorder.insert_events([StoredEvent(stream, versions[stream], "runyard.v1.RunMetricsReported", payload)])

def batch(i):
    stream = uuid.uuid4()
    recorder.insert_events([StoredEvent(stream, v, "runyard.v1.RunMetricsReported", payload) for v in range(1, 101)])

for i in range(50):  # warm up the pool and the prepared statements
    one(i)
began = time.perf_counter()
for i in range(50, 50 + single):
    one(i)
single_s = time.perf_counter() - began
began = time.perf_counter()
for i in range(batches):
    batch(i)
batch_s = time.perf_counter() - began
print(json.dumps({"single_s": single_s, "batch_s": batch_s}))
"""


def _event() -> NewEvent:
    return NewEvent(EVENT_TYPE, PAYLOAD, uuid.uuid4(), "exp-bench")


def _timed(action: Callable[[int], None], start: int, count: int) -> float:
    began = time.perf_counter()
    for i in range(start, start + count):
        action(i)
    return time.perf_counter() - began


def _raw_row(position: int) -> dict[str, Any]:
    return {
        "position": position,
        "stream_id": f"run-{position % 50}",
        "version": position,
        "event_id": uuid.uuid4(),
        "type": EVENT_TYPE,
        "data": PAYLOAD,
        "correlation_id": "exp-bench",
        "recorded_at": datetime.now(UTC),
    }


class Totals:
    """Seconds and counts per contender, summed over the rounds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def add(self, name: str, seconds: float, count: int) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.count[name] = self.count.get(name, 0) + count

    def rate(self, name: str) -> float:
        return self.count[name] / self.seconds[name]


def measure(
    url: str, single: int, batches: int, rounds: int, peer_url: str | None, writer_events: int
) -> dict[str, Any]:
    store = EventStore.open(url)
    totals = Totals()
    try:
        raw_metadata.create_all(store.engine)  # the benchmark's own table, not the product schema
        raw_position = 0

        def raw_insert(_i: int) -> None:
            nonlocal raw_position
            raw_position += 1
            with store.engine.begin() as conn:
                conn.execute(raw_events.insert(), _raw_row(raw_position))

        def raw_batch(_i: int) -> None:
            nonlocal raw_position
            rows = [_raw_row(raw_position + k) for k in range(1, 101)]
            raw_position += 100
            with store.engine.begin() as conn:
                conn.execute(raw_events.insert(), rows)

        def append_one(i: int) -> None:
            store.append(f"run-{i % 50}", [_event()], ANY)

        batch_number = 0

        def append_batch(_i: int) -> None:
            nonlocal batch_number
            batch_number += 1
            store.append(f"batch-{batch_number}", [_event() for _ in range(100)], 0)

        # Warm up pools, compiled caches and prepared statements.
        _timed(raw_insert, 0, 50)
        _timed(append_one, 0, 50)
        _timed(raw_batch, 0, 2)
        _timed(append_batch, 0, 2)
        peer = _peer_python() if peer_url else None
        per_round = max(1, single // rounds)
        batches_per_round = max(1, batches // rounds)
        for r in range(rounds):
            totals.add("raw_insert", _timed(raw_insert, 0, per_round), per_round)
            totals.add("append_single", _timed(append_one, r * per_round, per_round), per_round)
            totals.add("raw_batch100", _timed(raw_batch, 0, batches_per_round), batches_per_round * 100)
            totals.add("append_batch100", _timed(append_batch, 0, batches_per_round), batches_per_round * 100)
            if peer is not None and peer_url is not None:
                peer_s = _run_peer(peer, peer_url, per_round, batches_per_round)
                totals.add("pyeventsourcing_single", peer_s["single_s"], per_round)
                totals.add("pyeventsourcing_batch100", peer_s["batch_s"], batches_per_round * 100)
            if writer_events and store.dialect == "postgresql":
                for writers in (1, 4):
                    wall_s = _concurrent_appends(url, writers, writer_events // writers, f"r{r}")
                    totals.add(f"writers_{writers}", wall_s, (writer_events // writers) * writers)

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
        with store.read_engine.connect() as conn:
            count, distinct, first, last = conn.execute(
                text("SELECT count(*), count(DISTINCT position), min(position), max(position) FROM event_log")
            ).one()
    finally:
        store.close()

    result: dict[str, Any] = {f"{name}_per_s": round(totals.rate(name)) for name in totals.seconds}
    result["replay_read_all_events_per_s"] = round(replayed / replay_s)
    result["log_events"] = total
    result["log_gap_free"] = count == distinct == last - first + 1 == total and first == 1
    ratios = {
        "append_single_vs_raw": totals.rate("append_single") / totals.rate("raw_insert"),
        "append_batch100_vs_raw_batch100": totals.rate("append_batch100") / totals.rate("raw_batch100"),
    }
    if "pyeventsourcing_single" in totals.seconds:
        ratios["append_single_vs_pyeventsourcing"] = totals.rate("append_single") / totals.rate(
            "pyeventsourcing_single"
        )
        ratios["append_batch100_vs_pyeventsourcing"] = totals.rate("append_batch100") / totals.rate(
            "pyeventsourcing_batch100"
        )
    if "writers_4" in totals.seconds:
        ratios["four_writers_vs_one"] = totals.rate("writers_4") / totals.rate("writers_1")
    result["ratios"] = {name: round(value, 3) for name, value in ratios.items()}
    if store.dialect == "postgresql":  # issue 12's goals are PostgreSQL's; SQLite's ratios are shown for reference
        result["goals_met"] = {name: ratios[name] >= goal for name, goal in GOALS.items() if name in ratios}
    return result


# -- concurrent writers -------------------------------------------------------------


def _writer(url: str, stream: str, count: int, barrier: Any, out: Any) -> None:
    store = EventStore.open(url, migrate=False, pool_size=1, max_overflow=0)
    try:
        store.append(f"{stream}-warm", [_event()], ANY)  # connect and prepare before the clock starts
        version = 0
        barrier.wait()
        began = time.perf_counter()
        for _ in range(count):
            version = store.append(stream, [_event()], version).last_version
        out.put((began, time.perf_counter()))
    finally:
        store.close()


def _concurrent_appends(url: str, writers: int, per_writer: int, tag: str) -> float:
    """Seconds from the first writer's start to the last one's end; each appends `per_writer` single events."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(writers)
    out = context.Queue()
    procs = [
        context.Process(target=_writer, args=(url, f"writer-{tag}-{writers}-{k}", per_writer, barrier, out))
        for k in range(writers)
    ]
    for p in procs:
        p.start()
    spans = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a writer exited with {p.exitcode}")
    return float(max(end for _, end in spans) - min(start for start, _ in spans))


# -- pyeventsourcing ------------------------------------------------------------------


def _peer_python() -> Path:
    """The peer venv's interpreter, creating the venv with PYEVENTSOURCING on first use."""
    python = PEER_VENV / "bin" / "python"
    probe = "import eventsourcing.postgres, importlib.metadata as m; print(m.version('eventsourcing'))"
    wanted = PYEVENTSOURCING.split("==")[1]
    if python.exists():
        found = subprocess.run([python, "-c", probe], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == wanted:
            return python
    print(f"installing {PYEVENTSOURCING} into {PEER_VENV} (first use)...", file=sys.stderr)
    PEER_VENV.parent.mkdir(parents=True, exist_ok=True)
    base = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([base, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"eventsourcing[postgres]=={wanted}", "psycopg[binary]"],
        check=True,
    )
    return python


def _run_peer(python: Path, url: str, single: int, batches: int) -> dict[str, float]:
    parsed = make_url(url)
    env = {
        **os.environ,
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(parsed.database),
        "POSTGRES_HOST": str(parsed.host),
        "POSTGRES_PORT": str(parsed.port or 5432),
        "POSTGRES_USER": str(parsed.username),
        "POSTGRES_PASSWORD": parsed.password or "",
    }
    out = subprocess.run(
        [python, "-c", PEER_SCRIPT, str(single), str(batches)], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"pyeventsourcing run failed: {out.stderr[-2000:]}")
    seconds: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return seconds


@contextmanager
def _sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="runyard-bench-") as folder:
        yield f"sqlite:///{folder}/events.db"


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=2000, help="raw inserts and single-event appends, each")
    parser.add_argument("--batches", type=int, default=100, help="100-event appends (and raw batches), each")
    parser.add_argument("--writer-events", type=int, default=1000, help="events per writers case and round")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the contenders")
    parser.add_argument("--no-peer", action="store_true", help="leave pyeventsourcing out")
    parser.add_argument("--backend", nargs="+", choices=["postgresql", "sqlite"], default=["postgresql", "sqlite"])
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "event_log",
        "goals": GOALS,
        "pyeventsourcing": None if args.no_peer else PYEVENTSOURCING,
        "uptime_before": _uptime(),
    }
    for backend in args.backend:
        if backend == "postgresql":
            with postgres_database() as url, postgres_database() as peer_url:
                result[backend] = measure(
                    url, args.single, args.batches, args.rounds, None if args.no_peer else peer_url, args.writer_events
                )
        else:
            with _sqlite_url() as url:
                result[backend] = measure(url, args.single, args.batches, args.rounds, None, 0)
    result["uptime_after"] = _uptime()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
