"""An independent bill, computed by the test itself from the raw event log.

Deliberately shares no code with the usage projection or runyard's billing
module: it walks `read_all`, pairs each RunAssigned with the event that ends
that attempt, and cuts the intervals into UTC days with its own arithmetic.
Figures are integer GPU-microseconds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from runyard.server.domain.events import decode
from runyard.server.store import EventStore
from runyard.v1 import events_pb2

US = timedelta(microseconds=1)
ENDINGS = (
    events_pb2.RunCompleted,
    events_pb2.RunFailed,
    events_pb2.RunCanceled,
    events_pb2.RunStoppedEarly,
    events_pb2.RunRequeued,
    events_pb2.RunPaused,
)


@dataclass
class Held:
    run_id: str
    attempt: int
    account_id: str
    gpus: int
    gpu_model: str
    start: datetime
    end: datetime | None = None


def attempts_from_log(store: EventStore) -> dict[tuple[str, int], Held]:
    """Every attempt that held GPUs, keyed by (run id, attempt), with the times the log recorded."""
    created: dict[str, events_pb2.RunCreated] = {}
    held: dict[tuple[str, int], Held] = {}
    after = 0
    while batch := store.read_all(after, 1000):
        for e in batch:
            after = e.position
            if not e.stream_id.startswith("run:"):
                continue
            msg = decode(e.type, e.data)
            run_id = e.stream_id.removeprefix("run:")
            if isinstance(msg, events_pb2.RunCreated):
                created[run_id] = msg
            elif isinstance(msg, events_pb2.RunAssigned):
                spec_gpus = created[run_id].spec.resources.gpus
                held[(run_id, msg.attempt)] = Held(
                    run_id,
                    msg.attempt,
                    created[run_id].account_id,
                    len(msg.gpu_ids) or spec_gpus,
                    msg.gpu_model,
                    e.recorded_at,
                )
            elif isinstance(msg, ENDINGS) and (run_id, msg.attempt) in held:
                h = held[(run_id, msg.attempt)]
                h.end = h.end or e.recorded_at
    return held


def bill_by_day(attempts: dict[tuple[str, int], Held], until: datetime) -> dict[tuple[str, str, str], int]:
    """(account, "YYYY-MM-DD", GPU model) -> GPU-microseconds; open attempts and the window end at `until`."""
    out: dict[tuple[str, str, str], int] = defaultdict(int)
    for h in attempts.values():
        end = min(h.end or until, until)
        if h.gpus == 0 or end <= h.start:
            continue
        day = datetime(h.start.year, h.start.month, h.start.day, tzinfo=UTC)
        while day < end:
            overlap = min(end, day + timedelta(days=1)) - max(h.start, day)
            out[(h.account_id, day.date().isoformat(), h.gpu_model)] += (overlap // US) * h.gpus
            day += timedelta(days=1)
    return dict(out)


def bill_of_run(attempts: dict[tuple[str, int], Held], run_id: str, until: datetime) -> int:
    """GPU-microseconds of every attempt of one run."""
    mine = {k: h for k, h in attempts.items() if k[0] == run_id}
    return sum(bill_by_day(mine, until).values())


def total(attempts: dict[tuple[str, int], Held], until: datetime) -> int:
    return sum(bill_by_day(attempts, until).values())
