"""The usage projection: one row per attempt, its billed interval and GPUs.

Billing starts when an attempt is given its GPUs (RunAssigned) and ends when
its results are stored (RunCompleted) or when it ends otherwise: RunFailed,
RunCanceled, RunStoppedEarly (its searcher stopped it), RunPaused (its experiment or
ASHA paused it: paused time is never billed) or RunRequeued for an attempt lost to an infrastructure failure
(the next attempt is billed on its own, from its own RunAssigned). A run
canceled or paused while still queued never had GPUs and costs nothing.

An attempt ends when it is known to have ended: the agent's report of it, or,
when its agent is lost, the end of its lease (the RunRequeued or RunFailed
AGENT_LOST that the scheduler appends then). The lease wait is billed: until
the lease ends the old attempt may still be alive on its GPUs (the agent stops
it within the lease, see runyard.server.scheduler.scheduler), so those GPUs
cannot go to anyone else. Nothing beyond it is: a late report of that attempt
is refused (attempt fencing) and the next attempt bills from its own
RunAssigned. So the rule stays "from RunAssigned to the event that ends the
attempt", and the bill is still an independent sum over the raw events.

Every time comes from the events' `recorded_at`, never from the clock at
projection time, so a replay from position 0 reproduces every row to the
microsecond. An attempt still holding its GPUs has `ended_at` NULL; readers
bill it up to "now" (or the end of the window they ask about).

The run's account, experiment and requested GPUs are in its RunCreated,
which may lie in an earlier batch: it is read back from the log (version 1 of
the run's stream), so this projector depends on no other read model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Table, and_, bindparam, or_, select, update

from runyard.server.domain import billing
from runyard.server.domain.events import decode
from runyard.server.store.schema import event_log
from runyard.v1 import events_pb2

from . import schema
from .read_models import INT32_MAX, Decoded, insert_many, storable_id, type_names

Row = dict[str, Any]
Key = tuple[str, int]

_ENDINGS = (
    events_pb2.RunCompleted,
    events_pb2.RunFailed,
    events_pb2.RunCanceled,
    events_pb2.RunStoppedEarly,
    events_pb2.RunRequeued,
    events_pb2.RunPaused,
)
_CHUNK = 500


class UsageProjector:
    """Opens a usage row on RunAssigned and closes it on the event that ends the attempt."""

    name = "usage"
    tables: Sequence[Table] = (schema.attempt_usage,)
    reads = type_names(events_pb2.RunCreated, events_pb2.RunAssigned, *_ENDINGS)

    def apply(self, conn: Connection, decoded: Decoded) -> None:
        reads = self.reads
        runs = [(e.stream_id.partition(":")[2], e.recorded_at, m) for e, m in decoded if e.type in reads]
        if not runs:
            return
        created = {m.run_id: m for _, _, m in runs if isinstance(m, events_pb2.RunCreated)}
        assigned_earlier = {r for r, _, m in runs if isinstance(m, events_pb2.RunAssigned) and r not in created}
        created.update(_created_events(conn, assigned_earlier))

        new: dict[Key, Row] = {}
        ended: dict[Key, Any] = {}  # key -> ended_at, for rows of earlier batches
        for run_id, at, msg in runs:
            if isinstance(msg, events_pb2.RunAssigned):
                opened = created.get(run_id)
                if opened is None:  # a log without the run's opening event: nothing to bill against
                    continue
                key = _key(run_id, msg.attempt)
                if key in new:  # a second RunAssigned of one attempt (only a forged log has one): the first counts
                    continue
                new[key] = {
                    "run_id": key[0],
                    "attempt": key[1],
                    "account_id": opened.account_id,
                    "experiment_id": opened.experiment_id,
                    "agent_id": msg.agent_id,
                    "gpus": len(msg.gpu_ids) or opened.spec.resources.gpus,
                    "gpu_model": msg.gpu_model,
                    "started_at": at,
                    "ended_at": None,
                    "gpu_seconds": 0.0,
                }
            elif isinstance(msg, _ENDINGS) and msg.attempt > 0:
                key = _key(run_id, msg.attempt)
                row = new.get(key)
                if row is not None:
                    if row["ended_at"] is None:
                        _close(row, at)
                elif key not in ended:
                    ended[key] = at
        insert_many(conn, schema.attempt_usage, list(new.values()))
        if ended:
            _close_stored(conn, ended)


def _key(run_id: str, attempt: int) -> Key:
    """An attempt's key as its row stores it (see read_models.storable_row)."""
    return storable_id(run_id), min(attempt, INT32_MAX)


def _close(row: Row, at: Any) -> None:
    row["ended_at"] = at
    row["gpu_seconds"] = billing.seconds(billing.gpu_micros(row["started_at"], at, row["gpus"]))


def _close_stored(conn: Connection, ended: dict[Key, Any]) -> None:
    """Close rows opened by earlier batches; a row closed already keeps its first end."""
    t = schema.attempt_usage
    keys = list(ended)
    changes: list[Row] = []
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        match = or_(*(and_(t.c.run_id == r, t.c.attempt == a) for r, a in chunk))
        query = select(t.c.run_id, t.c.attempt, t.c.started_at, t.c.gpus).where(match, t.c.ended_at.is_(None))
        for r in conn.execute(query):
            at = ended[(r.run_id, r.attempt)]
            changes.append(
                {
                    "k_run_id": r.run_id,
                    "k_attempt": r.attempt,
                    "b_ended_at": at,
                    "b_gpu_seconds": billing.seconds(billing.gpu_micros(r.started_at, at, r.gpus)),
                }
            )
    if changes:
        stmt = (
            update(t)
            .where(t.c.run_id == bindparam("k_run_id"), t.c.attempt == bindparam("k_attempt"))
            .values(ended_at=bindparam("b_ended_at"), gpu_seconds=bindparam("b_gpu_seconds"))
        )
        conn.execute(stmt, changes)


def _created_events(conn: Connection, run_ids: Iterable[str]) -> dict[str, events_pb2.RunCreated]:
    """The RunCreated of runs opened in earlier batches, read from the log itself."""
    streams = [f"run:{r}" for r in run_ids]
    found: dict[str, events_pb2.RunCreated] = {}
    t = event_log.c
    for start in range(0, len(streams), _CHUNK):
        chunk = streams[start : start + _CHUNK]
        query = select(t.type, t.data).where(t.stream_id.in_(chunk), t.version == 1)
        for type_, data in conn.execute(query):
            msg = decode(type_, data)
            if isinstance(msg, events_pb2.RunCreated):
                found[msg.run_id] = msg
    return found
