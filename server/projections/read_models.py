"""The projector of experiments, runs, agents and metric points.

A rebuild replays tens of thousands of events a second, so events are applied
to rows held in memory for the whole batch and each touched row is written
once at the end, instead of one UPDATE per event.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from sqlalchemy import Connection, Table, delete, insert, select, update

from runyard.server.domain.errors import DomainError
from runyard.server.domain.events import decode
from runyard.server.domain.manifest import parse_manifest
from runyard.server.domain.searchers import is_searched
from runyard.server.store import RecordedEvent
from runyard.v1 import common_pb2, events_pb2

from . import schema

RS = common_pb2.RunState
_ENDED = (RS.RUN_STATE_COMPLETED, RS.RUN_STATE_FAILED, RS.RUN_STATE_CANCELED, RS.RUN_STATE_STOPPED_EARLY)

Row = dict[str, Any]


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time in Runyard is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class _Rows:
    """Rows of one table touched by a batch: loaded once, written once."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.rows: dict[str, Row] = {}
        self.new: set[str] = set()
        self.dirty: set[str] = set()

    def load(self, conn: Connection, ids: Iterable[str]) -> None:
        wanted = [i for i in set(ids) if i not in self.rows]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            for r in conn.execute(select(self.table).where(self.table.c.id.in_(chunk))).mappings():
                self.rows[r["id"]] = dict(r)

    def add(self, row: Row) -> None:
        self.rows[row["id"]] = row
        self.new.add(row["id"])

    def get(self, key: str) -> Row | None:
        row = self.rows.get(key)
        if row is not None:
            self.dirty.add(key)
        return row

    def flush(self, conn: Connection) -> None:
        insert_many(conn, self.table, [self.rows[k] for k in self.new])
        changed = [self.rows[k] for k in self.dirty - self.new]
        if changed:
            cols = [c.name for c in self.table.columns if c.name != "id"]
            stmt = update(self.table).where(self.table.c.id == _bind("b_id")).values({c: _bind(f"b_{c}") for c in cols})
            conn.execute(stmt, [{f"b_{k}": v for k, v in row.items()} for row in changed])


def insert_many(conn: Connection, table: Table, rows: Sequence[Row]) -> None:
    """Insert many new rows at once: the rebuild's hot path.

    On PostgreSQL rows stream in through COPY inside the same transaction,
    several times faster than one INSERT per row; elsewhere executemany.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(insert(table), list(rows))
        return
    columns = list(rows[0])
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    names = ", ".join(f'"{c}"' for c in columns)
    with cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


#: metric_points columns in the order of a `PointRow`.
POINT_COLUMNS = ("position", "idx", "run_id", "attempt", "name", "step", "value", "time_us", "source")
PointRow = tuple[int, int, str, int, str, int, float, int, str]

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: str, cache: dict[str, str]) -> str:
    """A string as COPY's text format wants it (backslash, tab and line breaks escaped); names repeat, so cached."""
    escaped = cache.get(value)
    if escaped is None:
        escaped = cache[value] = value.translate(_COPY_ESCAPES)
    return escaped


def insert_metric_points(conn: Connection, rows: Sequence[PointRow]) -> None:
    """Insert metric point rows: the projection's highest-volume write (a run may report 200,000 points).

    On PostgreSQL the rows go in as one COPY whose text this function formats
    itself: psycopg's per-row ``write_row`` cost about three times as much as
    the formatting. A float is written as ``repr``, the shortest text that
    reads back as the same double, so no value changes on the way in.
    Elsewhere a plain executemany.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(insert(schema.metric_points), [dict(zip(POINT_COLUMNS, r, strict=True)) for r in rows])
        return
    cache: dict[str, str] = {}
    text = "".join(
        f"{pos}\t{idx}\t{_copy_text(run, cache)}\t{att}\t{_copy_text(name, cache)}\t{step}\t{value!r}\t{t}\t"
        f"{_copy_text(src, cache)}\n"
        for pos, idx, run, att, name, step, value, t, src in rows
    )
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    names = ", ".join(f'"{c}"' for c in POINT_COLUMNS)
    with cursor.copy(f'COPY "{schema.metric_points.name}" ({names}) FROM STDIN') as copy:
        copy.write(text)


def _bind(name: str) -> Any:
    from sqlalchemy import bindparam

    return bindparam(name)


Decoded = Sequence[tuple[RecordedEvent, Message]]


class Projector(Protocol):
    """One read model: its tables, and how a batch of events changes them."""

    tables: Sequence[Table]

    def apply(self, conn: Connection, decoded: Decoded) -> None: ...


class ReadModelProjector:
    """Every read model, fed the same decoded batch inside one transaction."""

    def __init__(self, projectors: Sequence[Projector]) -> None:
        self.projectors = list(projectors)

    @property
    def tables(self) -> list[Table]:
        return [t for p in self.projectors for t in p.tables]

    def apply(self, conn: Connection, events: Sequence[RecordedEvent]) -> None:
        decoded = [(e, decode(e.type, e.data)) for e in events]
        for projector in self.projectors:
            projector.apply(conn, decoded)

    def reset(self, conn: Connection) -> None:
        for table in self.tables:
            conn.execute(delete(table))


class RunsProjector:
    """Turns run, experiment and agent events into their tables."""

    tables: Sequence[Table] = schema.PROJECTION_TABLES

    def __init__(self) -> None:
        self._priority_updates: list[tuple[str, int]] = []

    def apply(self, conn: Connection, decoded: Decoded) -> None:
        self._priority_updates = []
        experiments = _Rows(schema.experiments)
        runs = _Rows(schema.runs)
        agents = _Rows(schema.agents)
        run_ids = [_run_id(e) for e, _ in decoded if e.stream_id.startswith(("run:", "run-metrics:"))]
        runs.load(conn, run_ids)
        experiments.load(
            conn, [e.stream_id.split(":", 1)[1] for e, _ in decoded if e.stream_id.startswith("experiment:")]
        )
        agents.load(conn, [e.stream_id.split(":", 1)[1] for e, _ in decoded if e.stream_id.startswith("agent:")])
        points: list[PointRow] = []
        for event, msg in decoded:
            if event.stream_id.startswith("run:"):
                self._run_event(runs, event, msg)
            elif event.stream_id.startswith("run-metrics:") and isinstance(msg, events_pb2.RunMetricsReported):
                self._metrics(runs, event, msg, points)
            elif event.stream_id.startswith("experiment:"):
                self._experiment_event(experiments, event, msg)
            elif event.stream_id.startswith("agent:"):
                self._agent_event(agents, event, msg)
        experiments.flush(conn)
        runs.flush(conn)
        agents.flush(conn)
        for experiment_id, priority in self._priority_updates:
            conn.execute(
                update(schema.runs).where(schema.runs.c.experiment_id == experiment_id).values(priority=priority)
            )
        insert_metric_points(conn, points)

    # -- experiments -------------------------------------------------------

    def _experiment_event(self, rows: _Rows, event: RecordedEvent, msg: Message) -> None:
        if isinstance(msg, events_pb2.ExperimentCreated):
            rows.add(
                {
                    "id": msg.experiment_id,
                    "account_id": msg.account_id,
                    "name": msg.name,
                    "manifest_yaml": msg.manifest_yaml,
                    "code_uri": msg.code_uri,
                    "run_count": len(msg.run_ids),
                    "cancel_requested": False,
                    "created_at": event.recorded_at,
                    "priority": _manifest_priority(msg.manifest_yaml),
                    "searching": _searched(msg.manifest_yaml),
                    "end_reason": "",
                    "position": event.position,
                }
            )
            return
        row = rows.get(event.stream_id.split(":", 1)[1])
        if row is None:
            return
        if isinstance(msg, events_pb2.ExperimentRunAdded):
            row["run_count"] += 1
        elif isinstance(msg, events_pb2.ExperimentCompleted):
            row.update(searching=False, end_reason=row["end_reason"] or msg.reason)
        elif isinstance(msg, events_pb2.ExperimentBudgetSpent):
            row["end_reason"] = msg.reason
        elif isinstance(msg, events_pb2.ExperimentCancelRequested):
            row["cancel_requested"] = True
        elif isinstance(msg, events_pb2.ExperimentPrioritySet):
            row["priority"] = msg.priority
            self._priority_updates.append((row["id"], msg.priority))

    # -- agents ------------------------------------------------------------

    def _agent_event(self, rows: _Rows, event: RecordedEvent, msg: Message) -> None:
        if isinstance(msg, events_pb2.AgentRegistered):
            row = {
                "id": msg.agent_id,
                "hostname": msg.hostname,
                "slots": msg.slots,
                "gpu_ids": json.dumps(list(msg.gpu_ids)),
                "labels": json.dumps(dict(sorted(msg.labels.items()))),
                "frameworks": json.dumps([[f.name, f.version] for f in msg.frameworks]),
                "lost": False,
                "registered_at": event.recorded_at,
                "gpus": json.dumps([json_format.MessageToDict(g, preserving_proto_field_name=True) for g in msg.gpus]),
            }
            existing = rows.get(msg.agent_id)
            if existing is None:
                rows.add({**row, "draining": False})
            else:
                existing.update(row)
        elif isinstance(msg, events_pb2.AgentLost | events_pb2.AgentDrainRequested | events_pb2.AgentDrainCleared):
            agent = rows.get(event.stream_id.split(":", 1)[1])
            if agent is None:
                return
            if isinstance(msg, events_pb2.AgentLost):
                agent["lost"] = True
            else:
                agent["draining"] = isinstance(msg, events_pb2.AgentDrainRequested)

    # -- runs --------------------------------------------------------------

    def _run_event(self, rows: _Rows, event: RecordedEvent, msg: Message) -> None:
        if isinstance(msg, events_pb2.RunCreated):
            rows.add(
                {
                    "id": msg.run_id,
                    "experiment_id": msg.experiment_id,
                    "account_id": msg.account_id,
                    "idx": msg.index,
                    "state": RS.RUN_STATE_QUEUED,
                    "attempt": 0,
                    "agent_id": "",
                    "gpu_ids": "[]",
                    "command": msg.spec.command,
                    "hyperparameters": json.dumps(
                        {k: json_format.MessageToDict(v) for k, v in sorted(msg.spec.hyperparameters.items())}
                    ),
                    "results_uri": msg.spec.results_uri,
                    "spec": msg.spec.SerializeToString(deterministic=True),
                    "failure_reason": 0,
                    "message": "",
                    "exit_code": 0,
                    "cancel_requested": False,
                    "latest_metrics": "{}",
                    "created_at": event.recorded_at,
                    "assigned_at": None,
                    "started_at": None,
                    "ended_at": None,
                    "priority": msg.spec.priority,
                    "gpus": msg.spec.resources.gpus,
                    "gpu_model": "",
                    "queued_position": event.position,
                    "position": event.position,
                }
            )
            return
        row = rows.get(_run_id(event))
        if row is None:
            return
        at = event.recorded_at
        if isinstance(msg, events_pb2.RunAssigned):
            row.update(
                state=RS.RUN_STATE_ASSIGNED,
                attempt=msg.attempt,
                agent_id=msg.agent_id,
                gpu_ids=json.dumps(list(msg.gpu_ids)),
                gpu_model=msg.gpu_model,
                assigned_at=at,
                started_at=None,
            )
        elif isinstance(msg, events_pb2.RunStaging):
            row["state"] = RS.RUN_STATE_STAGING
        elif isinstance(msg, events_pb2.RunStarted):
            row.update(state=RS.RUN_STATE_RUNNING, started_at=at)
        elif isinstance(msg, events_pb2.RunUploading):
            row.update(state=RS.RUN_STATE_UPLOADING, exit_code=msg.exit_code)
        elif isinstance(msg, events_pb2.RunCompleted):
            row.update(state=RS.RUN_STATE_COMPLETED, results_uri=msg.results_uri, ended_at=at)
        elif isinstance(msg, events_pb2.RunFailed):
            row.update(
                state=RS.RUN_STATE_FAILED,
                failure_reason=msg.reason,
                exit_code=msg.exit_code,
                message=msg.message,
                ended_at=at,
            )
        elif isinstance(msg, events_pb2.RunRequeued):
            row.update(
                state=RS.RUN_STATE_QUEUED,
                failure_reason=msg.reason,
                message=msg.message,
                agent_id="",
                gpu_ids="[]",
                gpu_model="",
                queued_position=event.position,
            )
        elif isinstance(msg, events_pb2.RunCancelRequested):
            row["cancel_requested"] = True
        elif isinstance(msg, events_pb2.RunCanceled):
            row.update(state=RS.RUN_STATE_CANCELED, message=msg.reason, ended_at=at, cancel_requested=True)
        elif isinstance(msg, events_pb2.RunStopRequested):
            # Asked to stop: the scheduler treats it as a cancel (no re-dispatch, the stop re-sent on takeover).
            row.update(cancel_requested=True, message=_stop_message(msg))
        elif isinstance(msg, events_pb2.RunStoppedEarly):
            message = row["message"] if row["cancel_requested"] and row["message"] else msg.reason
            row.update(state=RS.RUN_STATE_STOPPED_EARLY, message=message, ended_at=at, cancel_requested=True)

    def _metrics(
        self, rows: _Rows, event: RecordedEvent, msg: events_pb2.RunMetricsReported, points: list[PointRow]
    ) -> None:
        """One row per point (tuples in `POINT_COLUMNS` order: a batch may hold 5,000 of them) and the latest values."""
        row = rows.get(msg.run_id)
        latest: dict[str, tuple[int, float]] = {}
        position, run_id, attempt = event.position, msg.run_id, msg.attempt
        for idx, p in enumerate(msg.points):
            name, step, value = p.name, p.step, p.value
            points.append((position, idx, run_id, attempt, name, step, value, p.time_us, p.source))
            prev = latest.get(name)
            if prev is None or step >= prev[0]:
                latest[name] = (step, value)
        if row is not None and latest:
            current: dict[str, list[float]] = json.loads(row["latest_metrics"])
            for name, (step, value) in latest.items():
                if name not in current or step >= current[name][0]:
                    current[name] = [float(step), value]
            row["latest_metrics"] = json.dumps(dict(sorted(current.items())))


def _manifest_priority(manifest_yaml: str) -> int:
    """The priority a manifest asks for (0 when it names none)."""
    try:
        loaded = yaml.safe_load(manifest_yaml)
    except yaml.YAMLError:
        return 0
    value = loaded.get("priority", 0) if isinstance(loaded, dict) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _searched(manifest_yaml: str) -> bool:
    """Does the experiment's searcher add its runs (so it stays ACTIVE until ExperimentCompleted)?"""
    try:
        return is_searched(parse_manifest(manifest_yaml))
    except DomainError:
        return False


def _stop_message(msg: events_pb2.RunStopRequested) -> str:
    if msg.reason == "asha":
        return f"stopped by ASHA at rung {msg.rung} ({msg.level}): {msg.value:g} did not make the cut"
    return f"stopped early: {msg.reason}"


def _run_id(event: RecordedEvent) -> str:
    return event.stream_id.split(":", 1)[1]


def is_ended(state: int) -> bool:
    return state in _ENDED
