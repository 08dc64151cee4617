"""The projector of experiments, runs, agents and metric points.

A rebuild replays tens of thousands of events a second, so events are applied
to rows held in memory for the whole batch and each touched row is written
once at the end, instead of one UPDATE per event.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from google.protobuf import json_format, text_format
from google.protobuf.message import Message
from sqlalchemy import BigInteger, Connection, Integer, String, Table, Text, func, select, update
from sqlalchemy.exc import OperationalError

from runyard.server.domain.events import decode
from runyard.server.domain.metric_repeats import RunSteps
from runyard.server.domain.run_states import TERMINAL
from runyard.server.store import RecordedEvent, dialects
from runyard.storable import fit, storable
from runyard.v1 import common_pb2, events_pb2, run_service_pb2

from . import schema

# Plain ints: looking a value up on the enum wrapper costs a Python call, and a rebuild sets states 10,000s of times.
_QUEUED, _ASSIGNED, _STAGING, _RUNNING = (
    common_pb2.RUN_STATE_QUEUED,
    common_pb2.RUN_STATE_ASSIGNED,
    common_pb2.RUN_STATE_STAGING,
    common_pb2.RUN_STATE_RUNNING,
)
_UPLOADING, _COMPLETED, _FAILED, _CANCELED, _STOPPED_EARLY = (
    common_pb2.RUN_STATE_UPLOADING,
    common_pb2.RUN_STATE_COMPLETED,
    common_pb2.RUN_STATE_FAILED,
    common_pb2.RUN_STATE_CANCELED,
    common_pb2.RUN_STATE_STOPPED_EARLY,
)
_PAUSED = common_pb2.RUN_STATE_PAUSED

Row = dict[str, Any]


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time in Runyard is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- storable values ---------------------------------------------------------------
#
# A projector must be able to write every event the log accepts. Text goes
# through runyard.storable (NUL and lone surrogates become U+FFFD, text longer
# than its column keeps a prefix and a digest); integers are clamped to their
# column (uint32 event fields do not all fit PostgreSQL's int4). Values that
# fit come back unchanged, so a replay still equals the live projection.

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ID_WIDTH = 64


def storable_id(key: str, width: int = ID_WIDTH) -> str:
    """An id as its row stores it; the fast path is one length and one ASCII check."""
    if len(key) <= width and key.isascii() and "\x00" not in key:
        return key
    return fit(key, width)


@functools.cache
def _column_kinds(table: Table) -> tuple[tuple[tuple[str, int | None], ...], tuple[tuple[str, int, int], ...]]:
    """The table's text columns with their widths, and its integer columns with their ranges."""
    texts: list[tuple[str, int | None]] = []
    ints: list[tuple[str, int, int]] = []
    for column in table.columns:
        kind = column.type
        if isinstance(kind, String | Text):
            texts.append((column.name, kind.length))
        elif isinstance(kind, BigInteger):
            ints.append((column.name, INT64_MIN, INT64_MAX))
        elif isinstance(kind, Integer):
            ints.append((column.name, -INT32_MAX - 1, INT32_MAX))
    return tuple(texts), tuple(ints)


def storable_row(table: Table, row: Row) -> Row:
    """`row` with every text and integer value made to fit its column of `table` (in place).

    A rebuild writes every row through here: the common case (short ASCII
    text without NUL, an int in range) costs a few checks per column, no call.
    """
    texts, ints = _column_kinds(table)
    for name, width in texts:
        value = row.get(name)
        if value.__class__ is str and not (
            value.isascii() and "\x00" not in value and (width is None or len(value) <= width)
        ):
            row[name] = storable(value) if width is None else fit(value, width)
    for name, low, high in ints:
        value = row.get(name)
        if value.__class__ is int and not low <= value <= high:
            row[name] = min(max(value, low), high)
    return row


#: Set while a batch is applied again, read model by read model, after it failed as a whole:
#: inserts then skip rows whose key is stored already instead of failing (a forged second opening event).
_careful: contextvars.ContextVar[bool] = contextvars.ContextVar("runyard_projection_careful", default=False)


@contextlib.contextmanager
def careful_inserts() -> Iterator[None]:
    token = _careful.set(True)
    try:
        yield
    finally:
        _careful.reset(token)


class _Rows:
    """Rows of one table touched by a batch: loaded once, written once.

    Keys are ids as stored (`storable_id`). A row opened twice keeps its first
    opening, in one batch as across batches (see `insert_many`).
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self.rows: dict[str, Row] = {}
        self.new: set[str] = set()
        self.dirty: set[str] = set()

    def load(self, conn: Connection, ids: Iterable[str]) -> None:
        wanted = [i for i in {storable_id(i) for i in ids} if i not in self.rows]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            for r in conn.execute(select(self.table).where(self.table.c.id.in_(chunk))).mappings():
                self.rows[r["id"]] = dict(r)

    def add(self, row: Row) -> None:
        key = row["id"] = storable_id(row["id"])
        if key in self.rows:
            return
        self.rows[key] = row
        self.new.add(key)

    def get(self, key: str) -> Row | None:
        row = self.rows.get(key)
        if row is None:
            key = storable_id(key)
            row = self.rows.get(key)
        if row is not None:
            self.dirty.add(key)
        return row

    def flush(self, conn: Connection) -> None:
        insert_many(conn, self.table, [self.rows[k] for k in self.new])
        changed = [storable_row(self.table, self.rows[k]) for k in self.dirty - self.new]
        if changed:
            cols = [c.name for c in self.table.columns if c.name != "id"]
            stmt = update(self.table).where(self.table.c.id == _bind("b_id")).values({c: _bind(f"b_{c}") for c in cols})
            conn.execute(stmt, [{f"b_{k}": v for k, v in row.items()} for row in changed])


def insert_many(conn: Connection, table: Table, rows: Sequence[Row]) -> None:
    """Insert many new rows at once: the rebuild's hot path.

    Every value is first made storable (`storable_row`). On PostgreSQL rows
    stream in through COPY inside the same transaction, several times faster
    than one INSERT per row; elsewhere executemany, skipping rows stored
    already. A COPY cannot skip them: a batch that holds one fails and is
    applied again with `careful_inserts`, which skips them on PostgreSQL too.
    """
    if not rows:
        return
    rows = [storable_row(table, row) for row in rows]
    dialects.bulk_insert(conn, table, rows, skip_stored=_careful.get())


#: metric_points columns in the order of a `PointRow`.
POINT_COLUMNS = ("position", "idx", "run_id", "attempt", "name", "step", "value", "time_us", "source")
PointRow = tuple[int, int, str, int, str, int, float, int, str]

_POINT_NAME_WIDTH, _POINT_SOURCE_WIDTH = 200, 32  # metric_points.name and .source
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def insert_metric_points(conn: Connection, rows: Sequence[PointRow]) -> None:
    """Insert metric point rows: the projection's highest-volume write (a run may report 200,000 points).

    Run ids, names and sources are made storable first, each distinct one
    once (`storable_id` with its column's width); `_metrics` keeps only
    finite values and clamps attempts. On PostgreSQL the rows go in as one
    COPY whose text this function formats itself: psycopg's per-row
    ``write_row`` cost about three times as much as the formatting. A float
    is written as ``repr``, the shortest text that reads back as the same
    double, so no value changes on the way in. Elsewhere a plain executemany.
    """
    if not rows:
        return
    runs = {t: storable_id(t, ID_WIDTH) for t in {r[2] for r in rows}}
    names = {t: storable_id(t, _POINT_NAME_WIDTH) for t in {r[4] for r in rows}}
    sources = {t: storable_id(t, _POINT_SOURCE_WIDTH) for t in {r[8] for r in rows}}
    fitted = (runs, names, sources)

    def as_rows() -> list[dict[str, Any]]:
        return [
            dict(zip(POINT_COLUMNS, (p, i, runs[r], a, names[n], s, v, t, sources[src]), strict=True))
            for p, i, r, a, n, s, v, t, src in rows
        ]

    def as_copy_text() -> str:
        # Run ids, names and sources repeat: each distinct one is escaped once, then looked up.
        er, en, es = ({t: f.translate(_COPY_ESCAPES) for t, f in m.items()} for m in fitted)
        return "".join(
            f"{pos}\t{idx}\t{er[run]}\t{att}\t{en[name]}\t{step}\t{value!r}\t{t}\t{es[src]}\n"
            for pos, idx, run, att, name, step, value, t, src in rows
        )

    dialects.load_rows(conn, schema.metric_points, POINT_COLUMNS, rows=as_rows, copy_text=as_copy_text)


def _bind(name: str) -> Any:
    from sqlalchemy import bindparam

    return bindparam(name)


Decoded = Sequence[tuple[RecordedEvent, Message]]


def type_names(*messages: type[Message]) -> frozenset[str]:
    """The stored type names of event payload classes."""
    return frozenset(m.DESCRIPTOR.full_name for m in messages)


class Projector(Protocol):
    """One read model: its name, its tables, the event types it reads, and how a batch of events changes them."""

    name: str
    tables: Sequence[Table]
    reads: frozenset[str]

    def apply(self, conn: Connection, decoded: Decoded) -> None: ...


class ReadModelProjector:
    """Every read model, fed the same decoded batch inside one transaction.

    Only events of a type some read model reads are decoded (log lines, for
    one, are read by none): a rebuild decodes each event at most once.
    """

    def __init__(self, projectors: Sequence[Projector]) -> None:
        self.projectors = list(projectors)
        self.reads = frozenset().union(*(p.reads for p in self.projectors))

    @property
    def tables(self) -> list[Table]:
        return [t for p in self.projectors for t in p.tables]

    def apply(self, conn: Connection, events: Sequence[RecordedEvent]) -> None:
        reads = self.reads
        decoded = [(e, decode(e.type, e.data)) for e in events if e.type in reads]
        for projector in self.projectors:
            projector.apply(conn, decoded)

    def apply_carefully(self, conn: Connection, events: Sequence[RecordedEvent]) -> list[Skipped]:
        """Apply a batch that failed as a whole, skipping only what cannot be projected; returns what was skipped.

        Each read model applies its events in a savepoint; one that fails
        applies them again one by one, each in its own savepoint, and skips
        the events that fail (and events whose payload cannot be decoded).
        The other read models, and that one's other events, are applied as
        usual, so one bad event stops nothing. Applying a batch event by
        event gives the same rows as applying it whole, so a rebuild skips
        the same events and gives the same read models.
        """
        skipped: list[Skipped] = []
        decoded: list[tuple[RecordedEvent, Message]] = []
        for e in events:
            if e.type not in self.reads:
                continue
            try:
                decoded.append((e, decode(e.type, e.data)))
            except Exception as exc:
                names = [p.name for p in self.projectors if e.type in p.reads]
                skipped.extend(Skipped(n, e.position, e.type, f"undecodable payload: {exc}") for n in names)
        with careful_inserts():
            for projector in self.projectors:
                mine = [d for d in decoded if d[0].type in projector.reads]
                if not mine:
                    continue
                try:
                    with conn.begin_nested():
                        projector.apply(conn, mine)
                    continue
                except OperationalError:
                    raise  # the database, not the event (a lost connection, a deadlock): the batch is retried whole
                except Exception:  # one by one below: the savepoint undid this read model's part
                    pass
                for item in mine:
                    try:
                        with conn.begin_nested():
                            projector.apply(conn, [item])
                    except OperationalError:
                        raise
                    except Exception as exc:
                        event = item[0]
                        skipped.append(Skipped(projector.name, event.position, event.type, _describe(exc)))
        return skipped

    def reset(self, conn: Connection) -> None:
        """Empty every read model, in the caller's transaction.

        On PostgreSQL with TRUNCATE: after a DELETE the dead rows stay in the
        indexes until a vacuum, and every row the rebuild inserts again pays
        to step over its dead twin (about three times slower). TRUNCATE is
        transactional there; it locks the tables until the reset commits.
        """
        dialects.empty_tables(conn, self.tables)


@dataclass(frozen=True, slots=True)
class Skipped:
    """An event a read model could not project, and why."""

    read_model: str
    position: int
    event_type: str
    error: str


def _describe(exc: BaseException) -> str:
    """An error in one line, at most 1,000 characters: it goes into logs and GetServerInfo."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return storable(text if len(text) <= 1000 else text[:999] + "…")


def _created_row(event: RecordedEvent, msg: events_pb2.RunCreated) -> Row:
    spec = msg.spec
    return {
        "id": msg.run_id,
        "experiment_id": msg.experiment_id,
        "account_id": msg.account_id,
        "idx": msg.index,
        "state": _QUEUED,
        "attempt": 0,
        "agent_id": "",
        "gpu_ids": "[]",
        "command": spec.command,
        "hyperparameters": json.dumps({k: _value_json(v) for k, v in sorted(spec.hyperparameters.items())}),
        "results_uri": spec.results_uri,
        "spec": spec.SerializeToString(deterministic=True),
        "failure_reason": 0,
        "message": "",
        "exit_code": 0,
        "cancel_requested": False,
        "latest_metrics": "{}",
        "created_at": event.recorded_at,
        "assigned_at": None,
        "started_at": None,
        "ended_at": None,
        "priority": spec.priority,
        "gpus": spec.resources.gpus,
        "gpu_model": "",
        "queued_position": event.position,
        "position": event.position,
        "not_preemptible": spec.not_preemptible,
        "assigned_position": 0,
        "preempt_requested": False,
        "preempted_by": "",
        "preempt_rule": "",
    }


def _value_json(value: Message) -> Any:
    """A hyperparameter value as JSON; one JSON cannot hold (NaN, infinity: only a forged spec has them) as its text."""
    try:
        return json_format.MessageToDict(value)
    except ValueError:
        return text_format.MessageToString(value, as_one_line=True)


def _assigned(row: Row, event: RecordedEvent, msg: events_pb2.RunAssigned) -> None:
    row.update(
        state=_ASSIGNED,
        attempt=msg.attempt,
        agent_id=msg.agent_id,
        gpu_ids=json.dumps(list(msg.gpu_ids)),
        gpu_model=msg.gpu_model,
        assigned_at=event.recorded_at,
        started_at=None,
        assigned_position=event.position,
        preempt_requested=False,
    )


def _staging(row: Row, event: RecordedEvent, msg: events_pb2.RunStaging) -> None:
    row["state"] = _STAGING


def _started(row: Row, event: RecordedEvent, msg: events_pb2.RunStarted) -> None:
    row.update(state=_RUNNING, started_at=event.recorded_at)


def _uploading(row: Row, event: RecordedEvent, msg: events_pb2.RunUploading) -> None:
    row.update(state=_UPLOADING, exit_code=msg.exit_code)


def _completed(row: Row, event: RecordedEvent, msg: events_pb2.RunCompleted) -> None:
    row.update(state=_COMPLETED, results_uri=msg.results_uri, ended_at=event.recorded_at)


def _failed(row: Row, event: RecordedEvent, msg: events_pb2.RunFailed) -> None:
    row.update(
        state=_FAILED,
        failure_reason=msg.reason,
        exit_code=msg.exit_code,
        message=msg.message,
        ended_at=event.recorded_at,
    )


def _requeued(row: Row, event: RecordedEvent, msg: events_pb2.RunRequeued) -> None:
    row.update(
        state=_QUEUED,
        failure_reason=msg.reason,
        message=msg.message,
        agent_id="",
        gpu_ids="[]",
        gpu_model="",
        queued_position=event.position,
        preempt_requested=False,
    )


def _preempt_requested(row: Row, event: RecordedEvent, msg: events_pb2.RunPreemptRequested) -> None:
    # The attempt stops for another run; its RunRequeued(PREEMPTED) ends the preemption (RunAssigned clears it).
    row.update(preempt_requested=True, preempted_by=msg.by_run_id, preempt_rule=msg.rule, message=msg.reason)


def _cancel_requested(row: Row, event: RecordedEvent, msg: events_pb2.RunCancelRequested) -> None:
    row["cancel_requested"] = True


def _canceled(row: Row, event: RecordedEvent, msg: events_pb2.RunCanceled) -> None:
    row.update(state=_CANCELED, message=msg.reason, ended_at=event.recorded_at, cancel_requested=True)


def _stop_requested(row: Row, event: RecordedEvent, msg: events_pb2.RunStopRequested) -> None:
    # Asked to stop: the scheduler treats it as a cancel (no re-dispatch, the stop re-sent on takeover).
    row.update(cancel_requested=True, message=_stop_message(msg))


def _stopped_early(row: Row, event: RecordedEvent, msg: events_pb2.RunStoppedEarly) -> None:
    message = row["message"] if row["cancel_requested"] and row["message"] else msg.reason
    row.update(state=_STOPPED_EARLY, message=message, ended_at=event.recorded_at, cancel_requested=True)


def _pause_requested(row: Row, event: RecordedEvent, msg: events_pb2.RunPauseRequested) -> None:
    # Like a stop: the scheduler neither re-dispatches it nor counts it queued, and re-sends the stop on takeover.
    row.update(cancel_requested=True, message=f"pausing: {msg.reason}" if msg.reason else "pausing")


def _paused(row: Row, event: RecordedEvent, msg: events_pb2.RunPaused) -> None:
    # Off the agents, holding nothing: its GPUs are free (billing of the attempt ended here too).
    row.update(
        state=_PAUSED,
        message=f"paused: {msg.reason}" if msg.reason else "paused",
        agent_id="",
        gpu_ids="[]",
        gpu_model="",
        cancel_requested=False,
    )


def _resumed(row: Row, event: RecordedEvent, msg: events_pb2.RunResumed) -> None:
    # Back in the queue, behind what was queued before it resumed.
    row.update(state=_QUEUED, message="", cancel_requested=False, queued_position=event.position)


#: How each event after RunCreated changes its run's row; events not listed leave it alone.
_RUN_TRANSITIONS: dict[type[Message], Callable[[Row, RecordedEvent, Any], None]] = {
    events_pb2.RunAssigned: _assigned,
    events_pb2.RunStaging: _staging,
    events_pb2.RunStarted: _started,
    events_pb2.RunUploading: _uploading,
    events_pb2.RunCompleted: _completed,
    events_pb2.RunFailed: _failed,
    events_pb2.RunRequeued: _requeued,
    events_pb2.RunCancelRequested: _cancel_requested,
    events_pb2.RunPreemptRequested: _preempt_requested,
    events_pb2.RunCanceled: _canceled,
    events_pb2.RunStopRequested: _stop_requested,
    events_pb2.RunStoppedEarly: _stopped_early,
    events_pb2.RunPauseRequested: _pause_requested,
    events_pb2.RunPaused: _paused,
    events_pb2.RunResumed: _resumed,
}


class RunsProjector:
    """Turns run, experiment and agent events into their tables."""

    name = "runs"
    tables: Sequence[Table] = schema.PROJECTION_TABLES
    reads = type_names(
        events_pb2.RunCreated,
        *_RUN_TRANSITIONS,
        events_pb2.RunCheckpointed,
        events_pb2.RunMetricsReported,
        events_pb2.ExperimentCreated,
        events_pb2.ExperimentRunAdded,
        events_pb2.ExperimentCompleted,
        events_pb2.ExperimentBudgetSpent,
        events_pb2.ExperimentCancelRequested,
        events_pb2.ExperimentPrioritySet,
        events_pb2.ExperimentPaused,
        events_pb2.ExperimentResumed,
        events_pb2.AgentRegistered,
        events_pb2.AgentLost,
        events_pb2.AgentDrainRequested,
        events_pb2.AgentDrainCleared,
    )

    def __init__(self) -> None:
        self._priority_updates: list[tuple[str, int]] = []
        self._checkpoints: list[Row] = []
        self._attempts: list[Row] = []
        self._attempt_ends: list[dict[str, str]] = []
        self._steps: dict[str, RunSteps] = {}
        self._seeded: set[str] = set()
        self._conn: Connection | None = None

    def apply(self, conn: Connection, decoded: Decoded) -> None:
        self._priority_updates = []
        self._checkpoints, self._attempts, self._steps, self._seeded, self._conn = [], [], {}, set(), conn
        self._attempt_ends = []
        experiments = _Rows(schema.experiments)
        runs = _Rows(schema.runs)
        agents = _Rows(schema.agents)
        by_kind: dict[str, list[tuple[str, RecordedEvent, Message]]] = {
            "run": [],
            "run-metrics": [],
            "experiment": [],
            "agent": [],
        }
        for event, msg in decoded:
            kind, _, key = event.stream_id.partition(":")
            bucket = by_kind.get(kind)
            if bucket is not None:
                bucket.append((key, event, msg))
        created = {key for key, _, msg in by_kind["run"] if type(msg) is events_pb2.RunCreated}
        runs.load(conn, [key for key, _, _ in by_kind["run"] + by_kind["run-metrics"] if key not in created])
        experiments.load(conn, [key for key, _, _ in by_kind["experiment"]])
        agents.load(conn, [key for key, _, _ in by_kind["agent"]])
        # The runs' latest metric values, parsed once per batch and written back once.
        latest: dict[str, dict[str, list[float]]] = {}
        points: list[PointRow] = []
        # Each kind touches its own table (metrics only the runs' latest values), so kinds apply one after another.
        for key, event, msg in by_kind["run"]:
            self._run_event(runs, key, event, msg)
        batches: list[Row] = []
        for _, event, msg in by_kind["run-metrics"]:
            if type(msg) is events_pb2.RunMetricsReported:
                self._metrics(runs, latest, event, msg, points, batches)
        for key, event, msg in by_kind["experiment"]:
            self._experiment_event(experiments, key, event, msg)
        for key, event, msg in by_kind["agent"]:
            self._agent_event(agents, key, event, msg)
        for run_id, values in latest.items():
            runs.rows[run_id]["latest_metrics"] = json.dumps(dict(sorted(values.items())))
        experiments.flush(conn)
        runs.flush(conn)
        agents.flush(conn)
        for experiment_id, priority in self._priority_updates:
            conn.execute(
                update(schema.runs).where(schema.runs.c.experiment_id == experiment_id).values(priority=priority)
            )
        insert_metric_points(conn, points)
        insert_many(conn, schema.metric_batches, batches)
        insert_many(conn, schema.run_checkpoints, self._checkpoints)
        insert_many(conn, schema.run_attempts, self._attempts)
        if self._attempt_ends:
            t = schema.run_attempts
            conn.execute(update(t).where(t.c.id == _bind("b_id")).values(ended=_bind("b_ended")), self._attempt_ends)
        self._conn = None

    # -- experiments -------------------------------------------------------

    def _experiment_event(self, rows: _Rows, key: str, event: RecordedEvent, msg: Message) -> None:
        if isinstance(msg, events_pb2.ExperimentCreated):
            facts = msg.facts  # decided at submit (or upcast from an older event's manifest by `decode`)
            rows.add(
                {
                    "id": msg.experiment_id,
                    "account_id": msg.account_id,
                    "name": msg.name,
                    "manifest_yaml": msg.manifest_yaml,
                    "code_uri": msg.code_uri,
                    "run_count": len(msg.run_ids),
                    "cancel_requested": False,
                    "paused": False,
                    "created_at": event.recorded_at,
                    "priority": facts.priority,
                    "searching": facts.searched,
                    "end_reason": "",
                    "objective_metric": storable(facts.objective_metric),
                    "objective_maximize": facts.objective_maximize if facts.objective_metric else True,
                    "position": event.position,
                }
            )
            return
        row = rows.get(key)
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
        elif isinstance(msg, events_pb2.ExperimentPaused | events_pb2.ExperimentResumed):
            row["paused"] = isinstance(msg, events_pb2.ExperimentPaused)
        elif isinstance(msg, events_pb2.ExperimentPrioritySet):
            row["priority"] = msg.priority
            self._priority_updates.append((row["id"], msg.priority))

    # -- agents ------------------------------------------------------------

    def _agent_event(self, rows: _Rows, key: str, event: RecordedEvent, msg: Message) -> None:
        if isinstance(msg, events_pb2.AgentRegistered):
            row = {
                "id": msg.agent_id,
                "hostname": msg.hostname,
                "slots": msg.slots,
                "gpu_ids": json.dumps(list(msg.gpu_ids)),
                "labels": json.dumps(dict(sorted(msg.labels.items()))),
                "frameworks": json.dumps([[f.name, f.version, f.digest] for f in msg.frameworks]),
                # Two runtimes exist; anything else (an older agent's "") runs processes. Bounded by the column.
                "runtime": "container" if msg.runtime == "container" else "process",
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
            agent = rows.get(key)
            if agent is None:
                return
            if isinstance(msg, events_pb2.AgentLost):
                agent["lost"] = True
            else:
                agent["draining"] = isinstance(msg, events_pb2.AgentDrainRequested)

    # -- runs --------------------------------------------------------------

    def _run_event(self, rows: _Rows, key: str, event: RecordedEvent, msg: Message) -> None:
        if type(msg) is events_pb2.RunCreated:
            rows.add(_created_row(event, msg))
            return
        if type(msg) is events_pb2.RunCheckpointed:
            self._checkpoints.append(_checkpoint_row(key, event, msg))
            return
        if type(msg) is events_pb2.RunAssigned:
            self._attempts.append(_attempt_row(key, event, msg))
        else:
            ended = _attempt_end(msg)
            attempt = min(int(getattr(msg, "attempt", 0)), INT32_MAX)
            if ended is not None and attempt:
                self._attempt_ends.append({"b_id": storable_id(f"{key}/{attempt}", 80), "b_ended": storable(ended)})
        transition = _RUN_TRANSITIONS.get(type(msg))
        if transition is None:
            return
        row = rows.get(key)
        if row is not None:
            transition(row, event, msg)

    def _metrics(
        self,
        rows: _Rows,
        latest: dict[str, dict[str, list[float]]],
        event: RecordedEvent,
        msg: events_pb2.RunMetricsReported,
        points: list[PointRow],
        batches: list[Row],
    ) -> None:
        """One row per point (tuples in `POINT_COLUMNS` order: a batch may hold 5,000 of them) and the latest values.

        `latest` holds the batch's runs' latest values, parsed from their rows
        once; `apply` writes them back once. `batches` gets the event's
        metric_batches row: its kept points as their rows store them, serialized
        at once from the event's own points (in C) when none was dropped or
        changed, else point by point.
        """
        # Filed under the run whose stream holds the event, never the run its body names (an agent's
        # report naming another run must not add to it); old events always named their own run.
        position, attempt = event.position, msg.attempt
        run_id = storable_id(
            event.stream_id.partition(":")[2] if event.stream_id.startswith("run-metrics:") else msg.run_id
        )
        current = latest.get(run_id)
        if current is None:
            row = rows.get(run_id)
            if row is None:
                current = {}  # points of a run whose RunCreated the log lacks: stored, with no latest values
            else:
                current = latest[run_id] = json.loads(row["latest_metrics"])
        if attempt > INT32_MAX:
            attempt = INT32_MAX
        first = len(points)
        changed = False
        counts: dict[str, int] = {}
        steps = self._run_steps(run_id, attempt)
        for idx, p in enumerate(msg.points):
            name, step, value = p.name, p.step, p.value
            if not math.isfinite(value):
                changed = True
                continue  # agents send none; a forged NaN has no row (SQLite would store it as NULL)
            if not (name.isascii() and "\x00" not in name and len(name) <= _POINT_NAME_WIDTH):
                changed = True
                name = storable_id(name, _POINT_NAME_WIDTH)  # the point and the latest values under one name
            if not steps.keep(attempt, name, step):
                changed = True
                continue  # an earlier attempt recorded this step: the first value stands (metric_repeats)
            points.append((position, idx, run_id, attempt, name, step, value, p.time_us, p.source))
            counts[name] = counts.get(name, 0) + 1
            prev = current.get(name)
            if prev is None or step >= prev[0]:
                current[name] = [float(step), value]
        kept = points[first:]
        if not kept:
            return
        sources = {r[8] for r in kept}
        if changed or any(storable_id(src, _POINT_SOURCE_WIDTH) != src for src in sources):
            batch = run_service_pb2.GetRunMetricsResponse()
            add = batch.points.add
            for _, _, _, _, name, step, value, time_us, src in kept:
                add(name=name, step=step, value=value, time_us=time_us, source=storable_id(src, _POINT_SOURCE_WIDTH))
        else:
            batch = run_service_pb2.GetRunMetricsResponse(points=msg.points)
            batch.DiscardUnknownFields()  # a newer agent's fields are not in the rows either
        batches.append(
            {"position": position, "run_id": run_id, "points": batch.SerializeToString(), "counts": json.dumps(counts)}
        )

    def _run_steps(self, run_id: str, attempt: int) -> RunSteps:
        """The run's highest steps per attempt, as far as this batch and the stored points tell.

        The first attempt needs nothing; a later one reads, once per run and
        batch, what earlier batches stored (highest step per attempt and name,
        on the (run_id, name, step) index).
        """
        steps = self._steps.get(run_id)
        if steps is None:
            steps = self._steps[run_id] = RunSteps()
        if attempt > 1 and attempt > steps.attempt and run_id not in self._seeded and self._conn is not None:
            self._seeded.add(run_id)
            steps.move_to(attempt)  # this batch's points of earlier attempts become the bar
            t = schema.metric_points
            stored = self._conn.execute(
                select(t.c.attempt, t.c.name, func.max(t.c.step))
                .where(t.c.run_id == run_id)
                .group_by(t.c.attempt, t.c.name)
            ).all()
            for stored_attempt, name, step in stored:
                target = steps.earlier if stored_attempt < attempt else steps.current
                if step > target.get(name, step - 1):
                    target[name] = int(step)
        return steps


def _checkpoint_row(run_id: str, event: RecordedEvent, msg: events_pb2.RunCheckpointed) -> Row:
    ck = msg.checkpoint
    return {
        "position": event.position,
        "run_id": run_id,
        "checkpoint_id": ck.checkpoint_id,
        "attempt": msg.attempt,
        "step": ck.step,
        "checkpoint": ck.SerializeToString(deterministic=True),
        "recorded_at": event.recorded_at,
    }


def _attempt_row(run_id: str, event: RecordedEvent, msg: events_pb2.RunAssigned) -> Row:
    return {
        "id": f"{run_id}/{msg.attempt}",
        "run_id": run_id,
        "attempt": msg.attempt,
        "agent_id": msg.agent_id,
        "resumed_from": msg.resume_from.SerializeToString(deterministic=True) if msg.HasField("resume_from") else b"",
        "assigned_at": event.recorded_at,
    }


def _attempt_end(msg: Message) -> str | None:
    """How an attempt ended, for `runyard show RUN` (None: the event ends no attempt)."""
    kind = type(msg)
    if kind is events_pb2.RunCompleted:
        return "completed"
    if kind is events_pb2.RunCanceled:
        return "canceled"
    if kind is events_pb2.RunStoppedEarly:
        return "stopped early"
    if kind is events_pb2.RunPaused:
        return f"paused: {getattr(msg, 'reason', '') or 'asked'}"
    if kind is events_pb2.RunFailed or kind is events_pb2.RunRequeued:
        reason = _reason_name(getattr(msg, "reason", 0))
        return f"{'failed' if kind is events_pb2.RunFailed else 're-queued'}: {reason}"
    return None


def _reason_name(reason: int) -> str:
    try:
        return common_pb2.FailureReason.Name(reason).removeprefix("FAILURE_REASON_").lower()  # type: ignore[arg-type]
    except ValueError:
        return str(reason)


def _stop_message(msg: events_pb2.RunStopRequested) -> str:
    if msg.reason == "asha":
        return f"stopped by ASHA at rung {msg.rung} ({msg.level}): {msg.value:g} did not make the cut"
    return f"stopped early: {msg.reason}"


def is_ended(state: int) -> bool:
    return state in TERMINAL
