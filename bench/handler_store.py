"""What a handler's unit of work costs on each event log backend, side by side in one process.

A handler loads its aggregate (`read_stream`) and appends its decision with
the version it read (optimistic concurrency), as the command handlers do;
this times that round on the in-memory log, a SQLite file and PostgreSQL, so
a test suite knows what it saves by running its handler tests in memory.
Prints JSON with each backend's commands/s and the ratio against memory.

    .venv/bin/python bench/handler_store.py [--commands 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runyard.server.store import NO_STREAM, EventLog, EventStore, InMemoryEventStore, NewEvent
from tests.support.services import postgres_database


def measure(store: EventLog, commands: int) -> dict[str, float]:
    """`commands` rounds of load-then-append, over 100 streams (an aggregate's history grows to commands/100)."""
    streams = [f"run-{uuid.uuid4().hex[:12]}" for _ in range(100)]
    for s in streams:
        store.append(s, [NewEvent("runyard.v1.RunCreated", b"x" * 64, uuid.uuid4())], NO_STREAM)
    started = time.perf_counter()
    for i in range(commands):
        s = streams[i % len(streams)]
        history = store.read_stream(s)
        store.append(s, [NewEvent("runyard.v1.RunUpdated", b"y" * 64, uuid.uuid4())], history[-1].version)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 3), "commands_per_s": round(commands / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=2000)
    args = parser.parse_args()
    result: dict[str, object] = {"benchmark": "handler_store", "commands": args.commands, "load": os.getloadavg()}
    figures: dict[str, dict[str, float]] = {}
    memory = InMemoryEventStore()
    figures["memory"] = measure(memory, args.commands)
    memory.close()
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = EventStore.open(f"sqlite:///{tmp}/bench.db")
        figures["sqlite"] = measure(sqlite, args.commands)
        sqlite.close()
    with postgres_database() as url:
        postgresql = EventStore.open(url)
        figures["postgresql"] = measure(postgresql, args.commands)
        postgresql.close()
    result.update(figures)
    rate = {name: figure["commands_per_s"] for name, figure in figures.items()}
    result["memory_vs_sqlite"] = round(rate["memory"] / rate["sqlite"], 1)
    result["memory_vs_postgresql"] = round(rate["memory"] / rate["postgresql"], 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
