"""Replay rate of a read-model rebuild from position 0, on PostgreSQL and SQLite.

Fills a fresh log with the whole life of many runs (created, assigned,
staging, running, log and metric batches, uploading, completed), then times
`ProjectionRunner.rebuild()` (`--repeat` times, each from position 0). Prints
JSON with the load (`uptime`) before and after; the goal (issue 12) is
200,000 events/s or more on PostgreSQL.

    .venv/bin/python bench/replay.py [--runs 4000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runyard.server.projections.runner import ProjectionRunner
from runyard.server.store import EventStore
from tests.support.services import postgres_database
from tests.support.synthetic import fill


def measure(url: str, runs: int, repeat: int) -> dict[str, object]:
    store = EventStore.open(url)
    try:
        events = fill(store, runs)
        runner = ProjectionRunner(store, batch_size=5000)
        runner.catch_up()
        rates = []
        replayed = 0
        total_s = 0.0
        for _ in range(repeat):
            replayed, seconds = runner.rebuild()
            rates.append(round(replayed / seconds))
            total_s += seconds
        return {
            "events": events,
            "replayed": replayed,
            "seconds": round(total_s / repeat, 3),
            "events_per_s": round(replayed * repeat / total_s),
            "each_events_per_s": rates,
        }
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=3, help="rebuilds of the same log, each timed")
    parser.add_argument("--backend", nargs="+", choices=["postgresql", "sqlite"], default=["postgresql", "sqlite"])
    args = parser.parse_args()
    result: dict[str, object] = {
        "benchmark": "projection_rebuild",
        "runs": args.runs,
        "goal_postgresql_events_per_s": 200_000,
        "uptime_before": _uptime(),
    }
    if "postgresql" in args.backend:
        with postgres_database() as url:
            result["postgresql"] = measure(url, args.runs, args.repeat)
    if "sqlite" in args.backend:
        with tempfile.TemporaryDirectory() as tmp:
            result["sqlite"] = measure(f"sqlite:///{tmp}/bench.db", args.runs, args.repeat)
    result["uptime_after"] = _uptime()
    print(json.dumps(result, indent=2))


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


if __name__ == "__main__":
    main()
