"""Replay rate of a read-model rebuild from position 0, on PostgreSQL and SQLite.

Fills a fresh log with the whole life of many runs (created, assigned,
staging, running, log and metric batches, uploading, completed), then times
`ProjectionRunner.rebuild()`. Prints JSON; the goal is 50,000 events/s or more
on PostgreSQL.

    .venv/bin/python bench/replay.py [--runs 4000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runyard.server.projections.runner import ProjectionRunner
from runyard.server.store import EventStore
from tests.support.services import postgres_database
from tests.support.synthetic import fill


def measure(url: str, runs: int) -> dict[str, object]:
    store = EventStore.open(url)
    try:
        events = fill(store, runs)
        runner = ProjectionRunner(store, batch_size=5000)
        runner.catch_up()
        replayed, seconds = runner.rebuild()
        return {
            "events": events,
            "replayed": replayed,
            "seconds": round(seconds, 3),
            "events_per_s": round(replayed / seconds),
        }
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4000)
    args = parser.parse_args()
    result: dict[str, object] = {
        "benchmark": "projection_rebuild",
        "runs": args.runs,
        "goal_postgresql_events_per_s": 50000,
    }
    with postgres_database() as url:
        result["postgresql"] = measure(url, args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        result["sqlite"] = measure(f"sqlite:///{tmp}/bench.db", args.runs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
