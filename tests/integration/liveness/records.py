"""What the runs wrote about themselves (see ticker.py), and the checks the liveness tests make on it."""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

TICKER = Path(__file__).with_name("ticker.py")


def ticker_command(seconds: float, records: Path) -> str:
    return f"{sys.executable} {TICKER} {seconds} {records}"


@dataclass
class Lived:
    """One attempt as it lived: from its first note to its last (its end, or its last sign of life)."""

    run_id: str
    attempt: int
    pid: int
    gpus: tuple[str, ...]
    first: float
    last: float
    ended: bool = False


def read_records(path: Path) -> dict[tuple[str, int], Lived]:
    lived: dict[tuple[str, int], Lived] = {}
    if not path.exists():
        return lived
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 6:
            continue  # a line cut short by a kill
        run_id, attempt, pid, gpus, what, at = parts
        key = (run_id, int(attempt))
        t = float(at)
        got = lived.get(key)
        if got is None:
            got = lived[key] = Lived(
                run_id, int(attempt), int(pid), tuple(g for g in gpus.split(",") if g != "-"), t, t
            )
        got.first, got.last = min(got.first, t), max(got.last, t)
        got.ended = got.ended or what == "end"
    return lived


def overlaps_of_a_run(lived: dict[tuple[str, int], Lived]) -> list[str]:
    """Attempts of one run that were alive at the same time."""
    found = []
    by_run: dict[str, list[Lived]] = {}
    for a in lived.values():
        by_run.setdefault(a.run_id, []).append(a)
    for run_id, attempts in by_run.items():
        for a, b in itertools.combinations(sorted(attempts, key=lambda x: x.first), 2):
            if b.first <= a.last:
                found.append(
                    f"{run_id}: attempt {a.attempt} lived until {a.last:.3f}, attempt {b.attempt} began {b.first:.3f}"
                )
    return found


def shared_gpus(lived: dict[tuple[str, int], Lived]) -> list[str]:
    """Attempts (of any runs) that were alive on one GPU at the same time."""
    found = []
    for a, b in itertools.combinations(lived.values(), 2):
        common = set(a.gpus) & set(b.gpus)
        if common and a.first <= b.last and b.first <= a.last:
            found.append(f"{a.run_id}:{a.attempt} and {b.run_id}:{b.attempt} both on {sorted(common)}")
    return found


def requeue_messages(database_url: str) -> dict[tuple[str, int], str]:
    """Why each re-queued attempt ended, from the log's RunRequeued events."""
    from runyard.server.domain.events import decode
    from runyard.server.store import EventStore
    from runyard.v1 import events_pb2

    store = EventStore.open(database_url, migrate=False, pool_size=1, max_overflow=0)
    found: dict[tuple[str, int], str] = {}
    try:
        after = 0
        while batch := store.read_all(after, 1000):
            for e in batch:
                after = e.position
                msg = decode(e.type, e.data) if e.stream_id.startswith("run:") else None
                if isinstance(msg, events_pb2.RunRequeued):
                    found[(e.stream_id.removeprefix("run:"), msg.attempt)] = msg.message
    finally:
        store.close()
    return found
